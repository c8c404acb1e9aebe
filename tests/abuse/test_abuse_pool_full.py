"""A pool on a small file system, filled by the real dccp, an overwrite among the writes.

As root the pool directory is an 8 MiB tmpfs (mounted here, unmounted at the end);
otherwise the door runs under RLIMIT_FSIZE, so a write past 6 MiB fails with EFBIG
as a full disk would fail with ENOSPC.
"""

import os
import resource
import subprocess

import pytest

from abuse_support import rss_bound, rss_kib
from distcache.dcap.namespace import ROOT
from interop_support import TRUST_LOCAL, Door, dccp

MIB = 1024 * 1024


def test_pool_filled_by_dccp_keeps_what_it_stored(tmp_path):
    pool = tmp_path / "root" / "pool"
    pool.mkdir(parents=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(pool)]).returncode == 0
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    if not mounted:  # inherited by the door process started below
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 * MIB, previous[1]))
    door = None
    try:
        door = Door(str(tmp_path), "--anonymous-access", "FULL", "--allow-truncate", *TRUST_LOCAL)
        if not mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        door.storage().namespace.mkdir("/full", ROOT, 0o777)
        first = os.urandom(5 * MIB)
        (tmp_path / "first").write_bytes(first)
        (tmp_path / "big").write_bytes(os.urandom(7 * MIB))
        rc, out = dccp("-A", tmp_path / "first", door.url("/full/first"))
        assert rc == 0, out
        rss_before, log_before = rss_kib(door.proc.pid), len(door.log_text())
        rc, out = dccp("-A", tmp_path / "big", door.url("/full/second"))
        assert rc != 0, "a 7 MiB file fitted in the rest of an 8 MiB pool"
        got = tmp_path / "back"
        rc, out = dccp("-A", door.url("/full/first"), got)
        assert rc == 0 and got.read_bytes() == first, out
        rc, out = dccp("-A", tmp_path / "big", door.url("/full/first"))  # the overwrite
        assert rc != 0
        got.unlink()
        rc, out = dccp("-A", door.url("/full/first"), got)
        assert rc == 0 and got.read_bytes() == first, "a failed overwrite lost the file: " + out
        rc, out = dccp("-A", door.url("/full/second"), tmp_path / "none")
        assert rc != 0  # the failed write left no file behind
        incoming = tmp_path / "root" / "pool" / "incoming"
        assert not incoming.exists() or os.listdir(incoming) == []
        small = os.urandom(100000)
        (tmp_path / "small").write_bytes(small)
        assert dccp("-A", tmp_path / "small", door.url("/full/small"))[0] == 0
        assert door.read("/full/small") == small
        log = door.log_text()[log_before:]
        print("FIGURE pool full (%s): rss %d -> %d KiB, %d log bytes for two failed writes"
              % ("tmpfs" if mounted else "RLIMIT_FSIZE", rss_before, rss_kib(door.proc.pid),
                 len(log)))
        assert rss_kib(door.proc.pid) - rss_before < rss_bound(16 * 1024)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        if door is not None:
            door.stop()
        if mounted:
            subprocess.run(["umount", str(pool)])
