"""dc_server's memcache listener, driven by Debian's libmemcached tools over real sockets."""

import os
import shutil
import socket

import pytest

from cache_support import DcServerProcess, free_tcp_port, short_socket_dir, wait_until_connectable
from distcache import memcache
from distcache.blocking import SessionCache
from memcache_support import ask, need_tools, tool


@pytest.fixture(scope="module")
def dc():
    directory = short_socket_dir()
    port = free_tcp_port()
    process = DcServerProcess(os.path.join(directory, "cache"), tcp_port=port,
                              extra=["-memcache-listen", f"IP:127.0.0.1:{free_tcp_port()}"])
    process.memcache_port = int(process.extra[1].rsplit(":", 1)[1])
    process.start()
    wait_until_connectable(socket.AF_INET, ("127.0.0.1", process.memcache_port))
    yield process
    process.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_memccp_memccat_memcrm(dc, tmp_path):
    need_tools()
    port = dc.memcache_port
    (tmp_path / "greeting").write_bytes(b"hello\x00world\n" * 100)
    assert tool("memccp", port, "greeting", cwd=tmp_path).returncode == 0
    got = tool("memccat", port, "greeting")
    assert got.returncode == 0 and got.stdout == b"hello\x00world\n" * 100 + b"\n"  # memccat ends with a newline
    assert tool("memcrm", port, "greeting").returncode == 0
    assert tool("memccat", port, "greeting").returncode != 0


def test_memcstat_reports_memcached_names(dc):
    need_tools()
    out = tool("memcstat", dc.memcache_port).stdout.decode()
    for name in ("curr_items", "get_hits", "get_misses", "evictions", "curr_connections",
                 "cmd_get", "cmd_set", "version"):
        assert f"{name}:" in out


def test_a_value_too_large_is_refused_by_memccp(dc, tmp_path):
    need_tools()
    (tmp_path / "big").write_bytes(b"x" * (memcache.VALUE_MAX + 1))
    assert tool("memccp", dc.memcache_port, "big", cwd=tmp_path).returncode != 0
    assert tool("memccat", dc.memcache_port, "big").returncode != 0


def test_sessions_cross_between_the_protocols(dc, tmp_path):
    need_tools()
    cache = SessionCache(dc.address)
    assert cache.add(b"from-distcache", b"DER bytes", 60000)
    got = tool("memccat", dc.memcache_port, "from-distcache")
    assert got.stdout == b"DER bytes\n"
    (tmp_path / "from-memcache").write_bytes(b"other DER")
    assert tool("memccp", dc.memcache_port, "from-memcache", cwd=tmp_path).returncode == 0
    assert cache.get(b"from-memcache") == b"other DER"
    assert cache.remove(b"from-memcache")
    assert tool("memccat", dc.memcache_port, "from-memcache").returncode != 0


def test_long_keys_reach_distcache_under_their_mapped_id(dc):
    key = b"mod_ssl-sess:" + b"9F" * 32
    assert ask(dc.memcache_port, b"set %s 0 300 4\r\nSESS\r\n" % key) == b"STORED\r\n"
    assert SessionCache(dc.address).get(memcache.store_id(key)) == b"SESS"


def test_raw_errors_keep_the_connection_and_long_lines_close_it(dc):
    port = dc.memcache_port
    assert ask(port, b"bogus\r\nset k 0 0 x\r\nversion\r\n", until=b"\r\nVERSION 1.6.0-distcache\r\n") \
        .startswith(b"ERROR\r\nCLIENT_ERROR bad command line format\r\n")
    assert ask(port, b"x" * 10000) == memcache.LINE_TOO_LONG
