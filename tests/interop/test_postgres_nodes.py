"""Two door+pool nodes sharing a PostgreSQL namespace, driven by the real dccp.

Each node has its own state directory (pool data) and port; a file written
through one door is read through the other, whose pool does not hold it,
so the other node's pool starts the mover and the door relays its address.
"""

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

from distcache.dcap import mover_codec as mc
from interop_support import DCCP, TRUST_LOCAL, Door, dccp
from rawclient import ControlClient, DataClient

pytestmark = pytest.mark.skipif(DCCP is None, reason="dccp (Debian package dcap) is not installed")


def pool_of(url, path):
    name = path.rsplit("/", 1)[-1]
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pool, size FROM inode WHERE name = %s", (name,)).fetchone()


def start_nodes(pg_url, tmp_path, *extra):
    """Doors a and b on one PostgreSQL namespace, pools pool-a and pool-b; stopped after."""
    started = []
    try:
        for name in ("a", "b"):
            tmp = str(tmp_path / name)
            os.makedirs(tmp)
            started.append(Door(tmp, "--namespace", pg_url, "--pool-name", "pool-" + name,
                                "--anonymous-access", "FULL", "--connect-host", "127.0.0.1",
                                *extra, *TRUST_LOCAL))
        yield started
    finally:
        for door in started:
            door.stop()


@pytest.fixture
def nodes(pg_url, tmp_path):
    yield from start_nodes(pg_url, tmp_path)


def test_written_through_one_door_read_through_the_other(nodes, pg_url, tmp_path):
    a, b = nodes
    payload = {name: os.urandom(3_000_000 + i) for i, name in enumerate(("via-a", "via-b"))}
    for name, data in payload.items():
        (tmp_path / name).write_bytes(data)
    code, out = dccp(tmp_path / "via-a", a.url("/via-a"))
    assert code == 0, out + a.log_text()
    code, out = dccp(tmp_path / "via-b", b.url("/via-b"))
    assert code == 0, out + b.log_text()
    assert pool_of(pg_url, "/via-a") == ("pool-a", len(payload["via-a"]))
    assert pool_of(pg_url, "/via-b") == ("pool-b", len(payload["via-b"]))

    code, out = dccp(b.url("/via-a"), tmp_path / "back-a")
    assert code == 0, out + b.log_text() + a.log_text()
    assert (tmp_path / "back-a").read_bytes() == payload["via-a"]
    code, out = dccp(a.url("/via-b"), tmp_path / "back-b")
    assert code == 0, out + a.log_text() + b.log_text()
    assert (tmp_path / "back-b").read_bytes() == payload["via-b"]
    assert "mover request" in a.log_text() and "mover request" in b.log_text()


def test_a_pool_that_is_down_fails_the_open_clearly_and_the_door_goes_on(nodes, pg_url, tmp_path):
    a, b = nodes
    (tmp_path / "f").write_bytes(b"held by b\n" * 1000)
    code, out = dccp(tmp_path / "f", b.url("/on-b"))
    assert code == 0, out + b.log_text()
    b.proc.kill()  # a crash: no goodbye, its registration stays until it ages
    b.proc.wait()

    started = time.monotonic()
    code, out = dccp(a.url("/on-b"), tmp_path / "copy", timeout=60)
    waited = time.monotonic() - started
    assert code != 0
    assert "Pool pool-b at 127.0.0.1:%d did not answer within 15 s" % b.port in out, out
    assert waited < 45

    # once its heartbeat is old the door refuses at once, without asking
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE pool_node SET seen = now() - interval '1 minute' WHERE name = 'pool-b'")
    started = time.monotonic()
    code, out = dccp(a.url("/on-b"), tmp_path / "copy", timeout=60)
    assert code != 0 and "Pool pool-b at 127.0.0.1:%d is down (last heard from" % b.port in out, out
    assert time.monotonic() - started < 10

    # the door still serves its own pool, and new files go to the live pool
    code, out = dccp(tmp_path / "f", a.url("/after"))
    assert code == 0, out + a.log_text()
    assert pool_of(pg_url, "/after")[0] == "pool-a"


def data_files(door):
    """The data files in a node's pool."""
    data = os.path.join(door.root, "pool", "data")
    return sorted(os.listdir(data)) if os.path.isdir(data) else []


def dc_unlink(url):
    """libdcap's dc_unlink, in a process of its own: (return code, errno name)."""
    script = ("import ctypes, errno, json, sys\n"
              "lib = ctypes.CDLL('libdcap.so.1', use_errno=True)\n"
              "rc = lib.dc_unlink(sys.argv[1].encode())\n"
              "print(json.dumps([rc, errno.errorcode.get(ctypes.get_errno(), '0')]))\n")
    out = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True,
                         timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_file_removed_through_one_door_leaves_no_data_on_the_other_pool(nodes, pg_url,
                                                                            tmp_path):
    a, b = nodes
    (tmp_path / "f").write_bytes(os.urandom(200_000))
    code, out = dccp(tmp_path / "f", b.url("/removed-via-a"))
    assert code == 0, out + b.log_text()
    assert pool_of(pg_url, "/removed-via-a")[0] == "pool-b"
    held = data_files(b)
    assert len(held) == 1

    assert dc_unlink(a.url("/removed-via-a"))[0] == 0
    assert pool_of(pg_url, "/removed-via-a") is None
    deadline = time.monotonic() + 20
    while data_files(b) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert data_files(b) == [], b.log_text()
    assert "removed the data of %s" % held[0] in b.log_text()


@pytest.fixture
def truncating_nodes(pg_url, tmp_path):
    yield from start_nodes(pg_url, tmp_path, "--allow-truncate")


def test_a_read_write_open_is_served_by_the_pool_that_holds_the_file(truncating_nodes, pg_url,
                                                                     tmp_path):
    a, b = truncating_nodes
    (tmp_path / "f").write_bytes(b"0123456789")
    code, out = dccp(tmp_path / "f", b.url("/rw"))
    assert code == 0, out + b.log_text()
    assert pool_of(pg_url, "/rw")[0] == "pool-b"

    control = ControlClient(a.port)
    try:
        line = control.ask('2 0 client open "dcap://127.0.0.1//rw" rw 127.0.0.1 1 -passive '
                           '-truncate -uid=0')
        data = DataClient(line, 2)
        assert line.split()[5] != str(a.port)
        data.send(mc.encode_seek_and_write(2, mc.SEEK_SET) + mc.encode_data(b"ab")
                  + mc.encode_close())
        assert control.line() == "2 0 client ok", a.log_text() + b.log_text()
        data.close()
    finally:
        control.close()
    assert "mover request" in b.log_text() and "rw /rw" in b.log_text()
    code, out = dccp(a.url("/rw"), tmp_path / "back")
    assert code == 0, out + a.log_text()
    assert (tmp_path / "back").read_bytes() == b"01ab456789"
    assert pool_of(pg_url, "/rw") == ("pool-b", 10)
