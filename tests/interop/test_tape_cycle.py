"""A tape pool that looks after itself, with the real dccp and a real door process.

One full cycle per tape back end: files written with dccp are flushed by
the flush policy, the sweeper drops the least recently used ones once the
pool is above its high mark, and reading a dropped file with dccp stages it
back.  A write that cannot fit fails at open with ENOSPC.
"""

import os
import stat
import textwrap

import pytest

from distcache.dcap import hsm
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool

from interop_support import Door, dccp
from polling import wait_until

SIZE = 200 * 1024
HSM_SCRIPT = """\
#!/bin/sh
case "$1" in
  put)
    cp "$3" "$TAPE/$2" || exit 43
    echo "osm://tape/?store=dcap&group=default&bfid=$2"
    ;;
  get)
    for a in "$@"; do case "$a" in -uri=*) uri=${a#-uri=};; esac; done
    cp "$TAPE/${uri##*bfid=}" "$3" || exit 43
    ;;
  remove)
    uri=${2#-uri=}
    rm -f "$TAPE/${uri##*bfid=}"
    ;;
esac
"""


def payload(seed):
    block = bytes((i * 37 + seed) % 251 for i in range(4096))
    return (block * (SIZE // len(block) + 1))[:SIZE]


@pytest.fixture
def running():
    doors = []
    yield doors
    for door in doors:
        door.stop()


def entries(root, paths):
    pool = open_pool(root, fsync=False)
    try:
        return {p: pool.namespace.lookup(p, ROOT) for p in paths}
    finally:
        pool.namespace.close()


def states(root, paths):
    return {p: e.state for p, e in entries(root, paths).items()}


def mkdir(root, path):
    os.makedirs(root, exist_ok=True)
    pool = open_pool(root, fsync=False)
    try:
        pool.namespace.mkdir(path, ROOT, 0o777)
    finally:
        pool.namespace.close()


@pytest.mark.parametrize("backend", ["directory", "script"])
def test_write_flush_sweep_and_read_staged_back(running, tmp_path, monkeypatch, backend):
    root = str(tmp_path / "root")
    tape = tmp_path / "tape"
    tape.mkdir()
    mkdir(root, "/cycle")
    if backend == "directory":
        hsm.save_config(root, "directory", str(tape), stage_delay=0.2)
    else:
        script = tmp_path / "hsm.sh"
        script.write_text(textwrap.dedent(HSM_SCRIPT))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("TAPE", str(tape))
        hsm.save_config(root, "script", str(script), timeout=10)
    door = Door(str(tmp_path), "--anonymous-access", "FULL", "--pool-size", "1000k",
                "--high-water", "50%", "--low-water", "0.2", "--flush-after", "1",
                "--sweep-interval", "0.2")
    running.append(door)
    assert "DCAP pool pool1: size 1024000 bytes, high 50% (512000), low 20% (204800); " \
        "flush after 1s or above the high mark" in door.log_text()

    paths = ["/cycle/f%d" % i for i in range(4)]
    for i, path in enumerate(paths):
        src = tmp_path / ("src%d" % i)
        src.write_bytes(payload(i))
        rc, out = dccp(src, door.url(path))
        assert rc == 0, out

    # the flush policy puts everything on tape, the sweeper drops the oldest copies
    def settled():
        now = states(root, paths)
        return all("tape" in s for s in now.values()) and \
            sum(s == "disk+tape" for s in now.values()) * SIZE <= 512000
    wait_until(settled, timeout=30, interval=0.2)
    now = states(root, paths)
    assert now[paths[0]] == "tape" and now[paths[-1]] == "disk+tape", now
    assert sorted(os.listdir(tape)) == sorted(e.pnfsid for e in entries(root, paths).values())

    back = tmp_path / "back"
    rc, out = dccp(door.url(paths[0]), back, timeout=60)
    assert rc == 0, out
    assert back.read_bytes() == payload(0)
    assert states(root, paths[:1]) == {paths[0]: "disk+tape"}
    log = door.log_text()
    assert "flushing" in log and "dropping" in log and "staged /cycle/f0" in log


def test_write_that_cannot_fit_fails_with_enospc(running, tmp_path):
    mkdir(os.path.join(str(tmp_path), "root"), "/full")
    door = Door(str(tmp_path), "--anonymous-access", "FULL", "--pool-size", str(SIZE))
    running.append(door)
    src = tmp_path / "src"
    src.write_bytes(payload(1))
    rc, out = dccp(src, door.url("/full/a"))
    assert rc == 0, out
    rc, out = dccp(src, door.url("/full/b"))
    assert rc != 0
    assert "No space left on pool pool1" in out, out
    assert states(os.path.join(str(tmp_path), "root"), ["/full/a"]) == {"/full/a": "disk"}
