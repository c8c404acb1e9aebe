"""Two door+pool nodes sharing a PostgreSQL namespace, driven by the real dccp.

Each node has its own state directory (pool data) and port; a file written
through one door is read through the other, whose pool does not hold it,
so the other node's pool starts the mover and the door relays its address.
"""

import os
import subprocess
import sys

import psycopg
import pytest

from interop_support import CHECKOUT, DCCP, Door, dccp

pytestmark = pytest.mark.skipif(DCCP is None, reason="dccp (Debian package dcap) is not installed")


def pool_of(url, path):
    name = path.rsplit("/", 1)[-1]
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pool, size FROM inode WHERE name = %s", (name,)).fetchone()


@pytest.fixture
def nodes(pg_url, tmp_path):
    started = []
    try:
        for name in ("a", "b"):
            tmp = str(tmp_path / name)
            os.makedirs(tmp)
            started.append(Door(tmp, "--namespace", pg_url, "--pool-name", "pool-" + name,
                                "--anonymous-access", "FULL", "--connect-host", "127.0.0.1"))
        yield started
    finally:
        for door in started:
            door.stop()


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
