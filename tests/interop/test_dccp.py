"""The real dccp (Debian dcap 2.47) against a `twistd dcap-door` process."""

import os
import re
import zlib

import pytest

from distcache.dcap.errors import NotFound
from distcache.dcap.namespace import ROOT

from interop_support import TRUST_LOCAL, dccp


def _data(n, seed=0):
    return (bytes(range(256)) * (n // 256 + 1))[seed:seed + n] if n else b""


@pytest.mark.parametrize("size", [0, 1, 1048570, 1 << 20, 3 * (1 << 20) + 7])
def test_write_new_file_then_read_it_back(door, tmp_path, size):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    path = "/w/new-%d" % size
    door.storage().namespace.mkdir("/w", ROOT, 0o777) if not _exists(door, "/w") else None
    rc, out = dccp(src, door.url(path))
    assert rc == 0, out
    entry = door.entry(path)
    assert entry.size == size
    assert entry.adler32 == zlib.adler32(src.read_bytes())
    back = tmp_path / "back"
    rc, out = dccp(door.url(path), back)
    assert rc == 0, out
    assert back.read_bytes() == src.read_bytes()


def _exists(door, path):
    try:
        door.entry(path)
        return True
    except NotFound:
        return False


def test_read_of_a_stored_file_matches(door, tmp_path):
    payload = _data(17000, 3)
    door.put("/pnfs/x", payload)
    rc, out = dccp(door.url("/pnfs/x"), tmp_path / "x")
    assert rc == 0, out
    assert (tmp_path / "x").read_bytes() == payload


def test_overwrite_allowed_replaces_the_file(door, tmp_path):
    door.put("/over/a", b"old contents")
    src = tmp_path / "new"
    src.write_bytes(b"brand new contents")
    rc, out = dccp(src, door.url("/over/a"))
    assert rc == 0, out
    assert door.read("/over/a") == b"brand new contents"


def test_overwrite_refused_keeps_the_old_version(doors, tmp_path):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL")
    door.put("/keep/a", b"old contents")
    src = tmp_path / "new"
    src.write_bytes(b"new")
    rc, out = dccp(src, door.url("/keep/a"))
    assert rc == 255
    assert "File is readOnly" in out and "--allow-truncate" in out
    assert door.read("/keep/a") == b"old contents"


def test_passive_flag_reads_and_writes(door, tmp_path):
    door.put("/pa/x", b"passive data")
    rc, out = dccp("-A", door.url("/pa/x"), tmp_path / "x")
    assert rc == 0, out
    assert (tmp_path / "x").read_bytes() == b"passive data"
    rc, out = dccp("-A", tmp_path / "x", door.url("/pa/y"))
    assert rc == 0, out
    assert door.read("/pa/y") == b"passive data"


def _connect_backs(door):
    return [int(p) for p in re.findall(r"connected back to 127\.0\.0\.1:(\d+)", door.log_text())]


def test_pool_connects_back_when_the_client_is_not_passive(doors, tmp_path):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--connect-back")
    payload = os.urandom(2 * (1 << 20) + 5)
    door.put("/cb/x", payload)
    before = len(_connect_backs(door))
    rc, out = dccp(door.url("/cb/x"), tmp_path / "x", env={"DCACHE_CLIENT_ACTIVE": "false"})
    assert rc == 0, out
    assert (tmp_path / "x").read_bytes() == payload
    assert len(_connect_backs(door)) == before + 1
    rc, out = dccp(tmp_path / "x", door.url("/cb/y"), env={"DCACHE_CLIENT_ACTIVE": "false"})
    assert rc == 0, out
    assert door.read("/cb/y") == payload
    assert len(_connect_backs(door)) == before + 2


def test_callback_port_range(doors, tmp_path):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--connect-back")
    door.put("/cb/range", b"ranged")
    low = 24000 + (os.getpid() % 1000) * 5
    rc, out = dccp("-p", "%d:%d" % (low, low + 4), door.url("/cb/range"), tmp_path / "r",
                   env={"DCACHE_CLIENT_ACTIVE": "false"})
    assert rc == 0, out
    assert (tmp_path / "r").read_bytes() == b"ranged"
    assert low <= _connect_backs(door)[-1] <= low + 4


def test_passive_flag_wins_over_connect_back(doors, tmp_path):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--connect-back")
    door.put("/cb/p", b"pp")
    before = len(_connect_backs(door))
    rc, out = dccp("-A", door.url("/cb/p"), tmp_path / "p")
    assert rc == 0, out
    assert (tmp_path / "p").read_bytes() == b"pp"
    assert len(_connect_backs(door)) == before


def test_prestage_and_check(door):
    door.put("/st/here", b"x")
    assert dccp("-P", door.url("/st/here"))[0] == 0
    assert dccp("-P", "-t", "-1", door.url("/st/here"))[0] == 0
    rc, out = dccp("-P", "-t", "-1", door.url("/st/nothere"))
    assert rc == 255
    assert "dc_stage fail : File not cached" in out
    rc, out = dccp("-P", door.url("/st/nothere"))
    assert rc == 255
    assert "File not cached" not in out


def test_copy_onto_a_dcap_directory_appends_the_basename(door, tmp_path):
    door.put("/into/placeholder", b"")
    src = tmp_path / "base.txt"
    src.write_bytes(b"named after the source")
    rc, out = dccp(src, door.url("/into"))
    assert rc == 0, out
    assert door.read("/into/base.txt") == b"named after the source"


def test_missing_source(door, tmp_path):
    rc, out = dccp(door.url("/no/such/file"), tmp_path / "x")
    assert rc == 255
    assert 'Can\'t open source file : "No such file or directory"' in out
    assert not (tmp_path / "x").exists()


def test_extra_options_are_accepted(door, tmp_path):
    door.put("/ex/x", b"extras")
    rc, out = dccp("-X", "-foo=bar", "-X", "-foo=baz", "-r", "100000", "-s", "200000", "-o", "30",
                   door.url("/ex/x"), tmp_path / "x")
    assert rc == 0, out
    assert (tmp_path / "x").read_bytes() == b"extras"
    assert re.search(r"open r /ex/x .*foo=baz", door.log_text())


def test_one_gibibyte_sparse_file_round_trip(door, tmp_path):
    src = tmp_path / "big"
    with open(src, "wb") as f:
        f.truncate(1 << 30)
    door.storage().namespace.mkdir("/big", ROOT, 0o777)
    rc, out = dccp(src, door.url("/big/one-gib"), timeout=300)
    assert rc == 0, out
    entry = door.entry("/big/one-gib")
    assert entry.size == 1 << 30
    assert entry.adler32 == _adler_of_zeros(1 << 30)
    rc, out = dccp(door.url("/big/one-gib"), "/dev/null", timeout=300)
    assert rc == 0, out
    assert "1073741824 bytes" in out


def _adler_of_zeros(n):
    value, block = 1, b"\0" * (1 << 20)
    for _ in range(n >> 20):
        value = zlib.adler32(block, value)
    return value


def test_client_active_false_still_obeys_a_connect_reply(door, tmp_path):
    door.put("/ca/x", b"server passive by default")
    before = len(_connect_backs(door))
    rc, out = dccp(door.url("/ca/x"), tmp_path / "x", env={"DCACHE_CLIENT_ACTIVE": "false"})
    assert rc == 0, out
    assert (tmp_path / "x").read_bytes() == b"server passive by default"
    assert len(_connect_backs(door)) == before
    assert re.search(r"open r /ca/x -timeout=-1 -onerror=default -uid=\d+", door.log_text())


def test_readonly_door_serves_reads_and_refuses_writes(doors, tmp_path):
    door = doors()  # default: --anonymous-access READONLY
    door.put("/ro/x", b"readable")
    rc, out = dccp(door.url("/ro/x"), tmp_path / "x")
    assert rc == 0, out
    src = tmp_path / "src"
    src.write_bytes(b"nope")
    rc, out = dccp(src, door.url("/ro/y"))
    assert rc == 255
    assert "Permission denied" in out
    assert not _exists(door, "/ro/y")


def test_a_write_announcing_more_than_max_file_size_is_refused_before_data_moves(doors, tmp_path):
    door = doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--allow-truncate",
                 "--max-file-size", "1K")
    door.put("/cap/kept", b"old contents")
    src = tmp_path / "src"
    src.write_bytes(b"x" * 2048)
    rc, out = dccp("-X", "-alloc-size=2048", src, door.url("/cap/kept"))
    assert rc != 0
    assert "No space left on device" in out and "--max-file-size" in out
    assert door.read("/cap/kept") == b"old contents"
    log = door.log_text()
    assert "failed: 204 No space left on device: 2048 bytes announced" in log
    assert "data connection up" not in log  # refused at the open: no mover ever started
    small = tmp_path / "small"
    small.write_bytes(b"y" * 1000)
    rc, out = dccp("-X", "-alloc-size=1000", small, door.url("/cap/small"))
    assert rc == 0, out
    assert door.read("/cap/small") == b"y" * 1000
