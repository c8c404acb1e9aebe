"""libpdcap (LD_PRELOAD) with head -c and tail -c on dcap:// names."""

import os
import subprocess

import pytest

LIBPDCAP = "/usr/lib/x86_64-linux-gnu/libpdcap.so.1"


def preload(*argv):
    env = dict(os.environ, LD_PRELOAD=LIBPDCAP)
    return subprocess.run(list(argv), env=env, capture_output=True, timeout=60)


def test_library_is_installed():
    files = subprocess.run(["dpkg", "-L", "libdcap1"], capture_output=True, text=True).stdout
    assert LIBPDCAP in files.split()


@pytest.mark.parametrize("count", [1, 100, 1 << 20, 3 * (1 << 20) + 11])
def test_head(door, count):
    payload = os.urandom(5 * (1 << 20))
    door.put("/lib/head-%d" % count, payload)
    p = preload("head", "-c", str(count), door.url("/lib/head-%d" % count))
    assert p.returncode == 0, p.stderr
    assert p.stdout == payload[:count]


@pytest.mark.parametrize("count", [1, 4096, 3 * (1 << 20) + 11])
def test_tail_reads_from_the_end(door, count):
    payload = os.urandom(5 * (1 << 20) + 3)
    door.put("/lib/tail-%d" % count, payload)
    p = preload("tail", "-c", str(count), door.url("/lib/tail-%d" % count))
    assert p.returncode == 0, p.stderr
    assert p.stdout == payload[-count:]


def test_missing_file(door):
    p = preload("head", "-c", "10", door.url("/lib/missing"))
    assert p.returncode == 1
    assert b"No such file or directory" in p.stderr
