"""Many connections: 1,000 idle at each listener, connection limits, the idle timeout."""

import os
import socket
import tempfile
import time

import pytest

from abuse_support import (rss_bound, Twistd, closed_by_peer, distcache_roundtrip, door_hello_ok,
                           memcache_roundtrip, ports, rss_kib)
from polling import wait_until

IDLE = 1000
#: resident-set growth allowed while 1,000 idle connections are held (KiB)
RSS_HELD_BOUND_KIB = rss_bound(16 * 1024)
#: and after they are gone, against the figure before they came (KiB)
RSS_AFTER_BOUND_KIB = rss_bound(16 * 1024)


def open_idle(port, n, source="127.0.0.1"):
    held = []
    try:
        for _ in range(n):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                 source_address=(source, 0)))
    except BaseException:
        close_all(held)
        raise
    return held


def refused(port, n, source):
    """How many of n new connections the listener closes at once (reset or EOF)."""
    count = 0
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                         source_address=(source, 0))
        except ConnectionResetError:
            count += 1
            continue
        with s:
            count += closed_by_peer(s, 10)
    return count


def close_all(sockets):
    for s in sockets:
        s.close()


def listeners(stack, door):
    fresh = os.urandom
    return [
        ("dc_server distcache", stack.server.pid, stack.server_port,
         lambda: distcache_roundtrip(stack.server_port, fresh(8).hex().encode(), b"v")),
        ("dc_server memcache", stack.server.pid, stack.server_memcache,
         lambda: memcache_roundtrip(stack.server_memcache, fresh(8).hex().encode(), b"v")),
        ("dc_client local", stack.client.pid, stack.client_port,
         lambda: distcache_roundtrip(stack.client_port, fresh(8).hex().encode(), b"v")),
        ("dc_client memcache", stack.client.pid, stack.client_memcache,
         lambda: memcache_roundtrip(stack.client_memcache, fresh(8).hex().encode(), b"v")),
        ("dc_snoop", stack.snoop.pid, stack.snoop_port,
         lambda: distcache_roundtrip(stack.snoop_port, fresh(8).hex().encode(), b"v")),
        ("door control", door.proc.pid, door.port, lambda: door_hello_ok(door.port)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_a_thousand_idle_connections(cache_stack, door_proc, index):
    name, pid, port, probe = listeners(cache_stack, door_proc)[index]
    assert probe()
    before = rss_kib(pid)
    started = time.monotonic()
    held = open_idle(port, IDLE)
    try:
        opened = time.monotonic() - started
        answered = probe()
        held_rss = rss_kib(pid)
    finally:
        close_all(held)
    assert answered, "%s does not answer while %d idle connections are held" % (name, IDLE)
    assert probe()
    after = rss_kib(pid)
    print("FIGURE idle %s: open %.2f s, rss before %d KiB, held %d KiB, after %d KiB"
          % (name, opened, before, held_rss, after))
    assert held_rss - before < RSS_HELD_BOUND_KIB
    assert after - before < RSS_AFTER_BOUND_KIB


@pytest.fixture
def limited_server():
    directory = tempfile.mkdtemp(prefix="abuse-limit-")
    port, mc_port = ports(2)
    server = Twistd(directory, "dc_server", [
        "--listen", "IP:127.0.0.1:%d" % port, "--memcache-listen", "IP:127.0.0.1:%d" % mc_port,
        "--max-connections", "200", "--max-connections-per-peer", "60"], [port, mc_port]).start()
    server.port = port
    yield server
    server.stop()


TOTAL_LINE = "the most allowed (--max-connections)"
TOTAL_BACK = "back under the connection limit ("
PEER_LINE = "the most allowed from one address (--max-connections-per-peer)"
PEER_BACK = "is back under its connection limit"


def test_total_limit_logged_once_per_episode(limited_server):
    server = limited_server
    sources = ["127.0.0.%d" % i for i in range(10, 14)]
    for episode in (1, 2):
        held = []
        try:
            for source in sources:  # 4 peers x 50: the total limit, no peer at its own
                held += open_idle(server.port, 50, source)
            assert refused(server.port, 30, "127.0.0.20") == 30
            assert wait_until(lambda: server.count(TOTAL_LINE) == episode, timeout=10)
        finally:
            close_all(held)
        assert wait_until(lambda: server.count(TOTAL_BACK) == episode, timeout=10)
        assert distcache_roundtrip(server.port, b"after-episode-%d" % episode, b"v")
    text = server.log_text()
    assert text.count(TOTAL_LINE) == 2 and text.count(TOTAL_BACK) == 2
    assert "30 connections were refused meanwhile" in text
    assert PEER_LINE not in text


def test_per_peer_limit_logged_once_and_other_peers_served(limited_server):
    server = limited_server
    held = open_idle(server.port, 60, "127.0.0.30")
    try:
        assert refused(server.port, 25, "127.0.0.30") == 25
        other = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                          source_address=("127.0.0.31", 0))
        other.close()
        assert distcache_roundtrip(server.port, b"other-peer", b"served")
        assert wait_until(lambda: server.count(PEER_LINE) == 1, timeout=10)
    finally:
        close_all(held)
    assert wait_until(lambda: server.count(PEER_BACK) == 1, timeout=10)
    assert "25 of its connections were refused meanwhile" in server.log_text()
    assert server.count(PEER_LINE) == 1 and TOTAL_LINE not in server.log_text()


def test_idle_timeout_closes_idle_connections_and_keeps_busy_ones():
    directory = tempfile.mkdtemp(prefix="abuse-idle-")
    port, = ports(1)
    server = Twistd(directory, "dc_server", ["--listen", "IP:127.0.0.1:%d" % port,
                                             "--idle-timeout", "1"], [port]).start()
    try:
        before = rss_kib(server.pid)
        held = open_idle(port, 300)
        started = time.monotonic()
        try:
            assert all(closed_by_peer(s, 10) for s in held)
            recovered = time.monotonic() - started
        finally:
            close_all(held)
        assert distcache_roundtrip(port, b"after-idle", b"v")
        lines = [line for line in server.log_text().splitlines() if "(--idle-timeout)" in line]
        closed = sum(int(line.split("closed ")[1].split()[0]) for line in lines)
        print("FIGURE idle-timeout: 300 closed in %.2f s, %d log lines, rss %d -> %d KiB"
              % (recovered, len(lines), before, rss_kib(server.pid)))
        assert closed == 300 and len(lines) <= 3
        assert recovered < 5
    finally:
        server.stop()
