"""dcap-admin: import, listings, mkdir/rm and the tape commands, on real files."""

import io
import os
import subprocess
import sys
import zlib

import pytest
import pytest_twisted
from twisted.internet import reactor

from distcache.dcap import admin
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "root")


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "big").write_bytes(os.urandom(2_500_000))
    (src / "sub" / "big").chmod(0o600)
    (src / "link").symlink_to("/etc/passwd")
    (src / "sub" / "odd:name").write_bytes(b"x")
    os.mkfifo(src / "fifo")
    return src


def dcap_admin(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    d = admin.run(["--root", root, "--no-fsync"] + list(argv), reactor, out, err)
    return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))


@pytest_twisted.inlineCallbacks
def test_import_copies_data_metadata_and_checksums(root, tree):
    code, out, err = yield dcap_admin(root, "import", str(tree), "/pnfs/data")
    assert code == 1  # some entries were refused, and said so
    assert "link: not a regular file" in err
    assert "fifo: not a regular file" in err
    assert "odd:name: Invalid character ':'" in err
    assert "imported" in out
    pool = open_pool(root)
    ns = pool.namespace
    big = ns.lookup("/pnfs/data/sub/big", ROOT)
    data = (tree / "sub" / "big").read_bytes()
    assert big.size == len(data) and big.adler32 == zlib.adler32(data)
    assert big.mode == 0o600 and big.uid == os.getuid()
    with pool.open_read(big) as f:
        assert f.read() == data
    names = sorted(e.path for e in ns.walk("/pnfs/data"))
    assert names == ["/pnfs/data", "/pnfs/data/a.txt", "/pnfs/data/sub", "/pnfs/data/sub/big"]
    ns.close()


@pytest_twisted.inlineCallbacks
def test_import_keeps_existing_files_unless_replace(root, tree):
    yield dcap_admin(root, "import", str(tree / "a.txt"), "/")
    (tree / "a.txt").write_bytes(b"changed")
    code, _out, err = yield dcap_admin(root, "import", str(tree / "a.txt"), "/")
    assert code == 1 and "File is readOnly" in err
    code, _out, _err = yield dcap_admin(root, "import", "--replace", "--owner", "7:8",
                                        str(tree / "a.txt"), "/")
    assert code == 0
    pool = open_pool(root)
    entry = pool.namespace.lookup("/a.txt", ROOT)
    assert (entry.size, entry.uid, entry.gid) == (7, 7, 8)
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_ls_list_mkdir_rm(root, tree):
    code, out, _ = yield dcap_admin(root, "mkdir", "-p", "/pnfs/x/y", "--mode", "0700",
                                    "--owner", "5:6")
    assert code == 0 and out.count("created") == 3
    code, out, _ = yield dcap_admin(root, "ls", "/pnfs/x")
    assert code == 0
    line = out.strip().split()
    assert line[0] == "drwx------" and line[1:3] == ["5", "6"] and line[-1] == "y"
    yield dcap_admin(root, "import", str(tree / "a.txt"), "/pnfs/x")
    code, out, _ = yield dcap_admin(root, "list")
    paths = [ln.split()[-1] for ln in out.splitlines()]
    assert paths == ["/pnfs", "/pnfs/x", "/pnfs/x/a.txt", "/pnfs/x/y"]
    fields = out.splitlines()[2].split()
    assert fields[3] == "6" and fields[5] == "disk" and fields[6] == "%08x" % zlib.adler32(
        b"hello\n")
    code, _out, err = yield dcap_admin(root, "rm", "/pnfs/x")
    assert code == 1 and "not empty" in err
    for path in ("/pnfs/x/a.txt", "/pnfs/x/y"):
        code, out, _ = yield dcap_admin(root, "rm", path)
        assert code == 0 and "removed" in out
    code, _out, err = yield dcap_admin(root, "ls", "/pnfs/x/y")
    assert code == 1 and "No such file or directory" in err
    assert os.listdir(os.path.join(root, "pool", "data")) == []


@pytest_twisted.inlineCallbacks
def test_tape_commands_flush_drop_states_stage(root, tree, tmp_path):
    yield dcap_admin(root, "import", str(tree / "sub" / "big"), "/")
    code, out, _ = yield dcap_admin(root, "states")
    assert code == 0 and out.splitlines()[-1] == "# disk 1"
    code, _out, err = yield dcap_admin(root, "flush", "/")
    assert code == 1 and "No tertiary storage" in err
    code, _out, _ = yield dcap_admin(root, "tape", "dir", str(tmp_path / "tape"),
                                     "--stage-delay", "0.2")
    assert code == 0
    code, _out, err = yield dcap_admin(root, "drop", "/big")
    assert code == 1 and "flush it" in err
    code, out, _ = yield dcap_admin(root, "flush", "/")
    assert code == 0 and "osm://tape/?store=dcap&group=default&bfid=" in out
    code, out, _ = yield dcap_admin(root, "drop", "/big")
    assert code == 0 and out.startswith("dropped")
    code, out, _ = yield dcap_admin(root, "states", "/")
    assert out.splitlines()[0].startswith("tape ") and out.splitlines()[-1] == "# tape 1"
    code, out, _ = yield dcap_admin(root, "stage", "/big")
    assert code == 0 and out.startswith("staged")
    pool = open_pool(root)
    entry = pool.namespace.lookup("/big", ROOT)
    assert entry.state == "disk+tape" and pool.is_cached(entry)
    pool.namespace.close()
    code, out, _ = yield dcap_admin(root, "tape", "show")
    assert "kind = directory" in out and "stage_delay = 0.2" in out
    yield dcap_admin(root, "tape", "none")
    code, out, _ = yield dcap_admin(root, "tape", "show")
    assert out.strip() == "no tape back end"


@pytest_twisted.inlineCallbacks
def test_tape_script_needs_an_executable(root, tmp_path):
    code, _out, err = yield dcap_admin(root, "tape", "script", str(tmp_path / "nope"))
    assert code == 1 and "not an executable script" in err
    script = tmp_path / "hsm.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    code, _out, _ = yield dcap_admin(root, "tape", "script", str(script), "-o", "pnfs=/x",
                                     "--timeout", "30")
    assert code == 0
    code, out, _ = yield dcap_admin(root, "tape", "show")
    assert "kind = script" in out and "pnfs = /x" in out and "timeout = 30.0" in out


def test_console_entry_point_exit_status(root, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    run = [sys.executable, "-m", "distcache.dcap.admin", "--root", root]
    ok = subprocess.run(run + ["mkdir", "/d"], env=env, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and "created" in ok.stdout
    bad = subprocess.run(run + ["mkdir", "/d"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "Directory exists" in bad.stderr
    usage = subprocess.run(run + ["frobnicate"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 2


@pytest_twisted.inlineCallbacks
def test_import_of_one_file_to_a_new_directory_or_name(root, tree):
    code, _out, _err = yield dcap_admin(root, "import", str(tree / "a.txt"), "/pnfs/new/")
    assert code == 0
    code, _out, _err = yield dcap_admin(root, "import", str(tree / "a.txt"), "/pnfs/renamed")
    assert code == 0
    code, _out, err = yield dcap_admin(root, "import", str(tree / "link"), "/pnfs")
    assert code == 1 and "not a regular file or directory" in err
    code, _out, err = yield dcap_admin(root, "import", str(tree / "nothere"), "/pnfs")
    assert code == 1 and "nothere does not exist" in err
    pool = open_pool(root)
    assert pool.namespace.lookup("/pnfs/new/a.txt", ROOT).size == 6
    assert pool.namespace.lookup("/pnfs/renamed", ROOT).size == 6
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_space_shows_use_against_the_marks_the_flush_queue_and_the_pins(root, tmp_path):
    from distcache.dcap import space
    src = tmp_path / "src"
    src.mkdir()
    for name, size in (("a", 300), ("b", 200), ("c", 100)):
        (src / name).write_bytes(b"x" * size)
    code, out, err = yield dcap_admin(root, "import", str(src), "/d")
    assert code == 0, err
    code, out, err = yield dcap_admin(root, "space")
    assert out.splitlines()[0] == "pool pool1: 600 bytes in 3 disk copies; no size limit (no sweeping)"
    space.save_settings(root, space.SpaceSettings(pool_size=1000, high=0.5, low=0.25,
                                                  flush_after=600.0))
    assert (yield dcap_admin(root, "tape", "dir", str(tmp_path / "tape")))[0] == 0
    assert (yield dcap_admin(root, "flush", "/d/a"))[0] == 0
    pool = open_pool(root)
    b = pool.namespace.lookup("/d/b", ROOT)
    pool.pin(b, 3600)
    pool.namespace.close()
    code, out, err = yield dcap_admin(root, "space")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:4] == [
        "pool pool1: 600 of 1000 bytes used (60.0%) in 3 disk copies",
        "marks: high 50% = 500 bytes, low 25% = 250 bytes; above the high mark",
        "droppable (on tape, not pinned): 300 bytes; free 400, free after drops 700",
        "policy: size 1000 bytes, high 50% (500), low 25% (250); flush after 600s or above "
        "the high mark",
    ]
    assert lines[4] == "flush queue: 2 files, 300 bytes"
    assert [line.split()[-1] for line in lines[5:7]] == ["/d/b", "/d/c"]
    assert lines[7] == "pins: 1"
    assert lines[8].startswith("  %s          200" % b.pnfsid) and lines[8].endswith(
        "s left  /d/b")
    assert 3590 <= float(lines[8].split()[2].rstrip("s")) <= 3600
