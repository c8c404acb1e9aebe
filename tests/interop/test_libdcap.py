"""libdcap's namespace calls and directory listings, through ctypes in a child process."""

import json
import re
import os
import subprocess
import sys

from distcache.dcap.namespace import ROOT

HERE = os.path.dirname(os.path.abspath(__file__))


def test_namespace_calls_and_listings(door):
    base = "dcap://127.0.0.1:%d/lib-ns" % door.port
    door.storage().namespace.mkdir("/lib-ns", ROOT, 0o777)
    p = subprocess.run([sys.executable, os.path.join(HERE, "libdcap_calls.py"), base],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["mkdir"] == [0, "0"] and out["mkdir_sub"] == [0, "0"]
    assert door.entry("/lib-ns/d").mode == 0o755
    assert out["mkdir_again"] == [-1, "EEXIST"]
    assert out["write"] == 5 and out["close"] == 0
    assert out["list1"] == ["f", "sub"]
    assert out["list2"] == ["f", "sub"]
    assert out["list_file"] is None
    assert out["chmod"] == [0, "0"]
    assert door.entry("/lib-ns/d/f").mode == 0o600
    assert out["unlink_dir"] == [-1, "EISDIR"]
    assert out["rmdir_nonempty"] == [-1, "EACCES"]
    assert out["unlink"] == [0, "0"] and out["rmdir_sub"] == [0, "0"]
    assert out["close_empty"] == 0 and out["list_with_g"] == ["f", "g", "sub"]
    assert out["list3"] == ["f"]
    assert door.read("/lib-ns/d/f") == b"12345"


RENAME = r"""
import ctypes, sys
lib = ctypes.CDLL("libdcap.so.1")
lib.dc_rename(sys.argv[1].encode(), sys.argv[2].encode())
"""


def test_rename_through_libdcap(door):
    """The door renames and answers ok; libdcap 2.47.14 may then abort in its own cleanup."""
    door.put("/lib-mv/a", b"moved")
    env = dict(os.environ, DCACHE_DEBUG="255")
    p = subprocess.run([sys.executable, "-c", RENAME, door.url("/lib-mv/a"), door.url("/lib-mv/b")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert re.search(r'client rename "dcap://127\.0\.0\.1/lib-mv/a" \S+/lib-mv/b', p.stderr)
    assert "Server reply: ok destination" in p.stderr
    assert door.read("/lib-mv/b") == b"moved"
