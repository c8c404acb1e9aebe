"""dc_server's memcache listener, driven by Debian's libmemcached tools over real sockets."""

import os
import shutil
import socket

import pytest

from cache_support import (DcClientProcess, DcServerProcess, free_tcp_port, short_socket_dir,
                           wait_until_connectable)
from distcache import memcache
from distcache.blocking import SessionCache
from memcache_support import ask, need_tools, tool, wait_for



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
    # memccat ends what it prints with a newline
    assert got.returncode == 0 and got.stdout == b"hello\x00world\n" * 100 + b"\n"
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
    reply = ask(port, b"bogus\r\nset k 0 0 x\r\nversion\r\n", until=b"-distcache\r\n")
    assert reply.startswith(b"ERROR\r\nCLIENT_ERROR bad command line format\r\nVERSION ")
    assert ask(port, b"x" * 10000) == memcache.LINE_TOO_LONG


@pytest.fixture
def proxied(sockdir):
    """dc_server (distcache and memcache) behind a dc_client with a memcache listener."""
    server = DcServerProcess(os.path.join(sockdir, "cache"),
                             extra=["-memcache-listen", f"IP:127.0.0.1:{free_tcp_port()}"])
    server.memcache_port = int(server.extra[1].rsplit(":", 1)[1])
    server.start()
    wait_until_connectable(socket.AF_INET, ("127.0.0.1", server.memcache_port))
    client = DcClientProcess(os.path.join(sockdir, "scache"), server.address, retry_ms=200,
                             extra=["-memcache-listen", f"IP:127.0.0.1:{free_tcp_port()}"])
    client.memcache_port = int(client.extra[1].rsplit(":", 1)[1])
    client.start()
    wait_until_connectable(socket.AF_INET, ("127.0.0.1", client.memcache_port))
    yield server, client
    client.stop()
    server.stop()


def test_tools_through_dc_client(proxied, tmp_path):
    need_tools()
    server, client = proxied
    (tmp_path / "via-proxy").write_bytes(b"session through the proxy")
    assert tool("memccp", client.memcache_port, "via-proxy", cwd=tmp_path).returncode == 0
    assert tool("memccat", client.memcache_port, "via-proxy").stdout == (
        b"session through the proxy\n")
    assert tool("memccat", server.memcache_port, "via-proxy").stdout == (
        b"session through the proxy\n")
    assert SessionCache(client.address).get(b"via-proxy") == b"session through the proxy"
    assert "curr_connections:" in tool("memcstat", client.memcache_port).stdout.decode()
    assert tool("memcrm", client.memcache_port, "via-proxy").returncode == 0
    assert SessionCache(server.address).get(b"via-proxy") is None


def test_dc_client_memcache_while_the_server_is_away(proxied, tmp_path):
    server, client = proxied
    port = client.memcache_port
    assert ask(port, b"set k 0 0 4\r\nDATA\r\n") == b"STORED\r\n"
    server.stop()
    assert wait_for(lambda: ask(port, b"get k\r\n", until=b"END\r\n") == b"END\r\n")
    assert ask(port, b"set k 0 0 4\r\nDATA\r\n").startswith(b"SERVER_ERROR ")
    server.start()
    assert wait_for(lambda: ask(port, b"set k 0 0 4\r\nDATA\r\n") == b"STORED\r\n", 5.0)
    assert ask(port, b"get k\r\n", until=b"END\r\n") == b"VALUE k 0 4\r\nDATA\r\nEND\r\n"
