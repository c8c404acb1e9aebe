"""Prometheus metrics of dc_server and dc_client: collectors in memory, then real processes."""

import os
import socket
import urllib.request

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task, threads
from twisted.internet.testing import StringTransport

from cache_support import (DcClientProcess, DcServerProcess, free_tcp_port,
                           wait_until_connectable)
from distcache import wire
from distcache.blocking import SessionCache
from distcache.counting import CountingStore, StoreCounters
from distcache.memcache_server import MemcacheFactory
from distcache.metrics import (METRICS_IDLE_SECONDS, METRICS_LIMITS, ClientCollector,
                               ServerCollector, metrics_listener, registry_of)
from distcache.upstream import ServerLink
from distcache.replies import CacheUnavailable
from distcache.server import CacheServerFactory
from distcache.store import SessionStore
from memcache_support import ask, wait_for
from polling import poll_until as poll



def samples(text):
    """{(name, frozenset(labels)): value} from the Prometheus text format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found, name, **labels):
    return found[(name, frozenset(labels.items()))]


def test_server_collector_counts_both_protocols():
    clock = task.Clock()
    counters = StoreCounters()
    inner = SessionStore(clock, 2)
    store = CountingStore(inner, counters)
    factory = CacheServerFactory(store, clock=clock)
    factory.counters = counters
    memcache = MemcacheFactory(store, clock)
    registry = registry_of(ServerCollector(factory, inner, counters, memcache))
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    add = wire.encode_add_payload
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, add(b"a", b"xy", 10))
                       + wire.encode_request(2, wire.OP_ADD, add(b"a", b"z", 10))
                       + wire.encode_request(3, wire.OP_GET, b"a")
                       + wire.encode_request(4, wire.OP_GET, b"b"))
    mc = memcache.buildProtocol(None)
    mc.makeConnection(StringTransport())
    mc.dataReceived(b"set b 0 0 3\r\nabc\r\nset c 0 0 1\r\nd\r\nget a\r\nbogus\r\n")
    clock.advance(1)
    found = samples(generate_latest(registry).decode())
    assert value(found, "distcache_operations_total", op="add") == 4
    assert value(found, "distcache_operations_total", op="get") == 3
    assert value(found, "distcache_operations_total", op="remove") == 2
    assert value(found, "distcache_get_hits_total") == 1
    assert value(found, "distcache_get_misses_total") == 2
    assert value(found, "distcache_add_total", result="OK") == 3
    assert value(found, "distcache_add_total", result="MATCHING_SESSION") == 1
    assert value(found, "distcache_evictions_total") == 1
    assert value(found, "distcache_sessions") == 2
    assert value(found, "distcache_session_bytes") == 4
    assert value(found, "distcache_connections", protocol="distcache") == 1
    assert value(found, "distcache_connections", protocol="memcache") == 1
    assert value(found, "distcache_protocol_errors_total", protocol="memcache") == 1
    assert value(found, "distcache_memcache_commands_total", command="set") == 2
    clock.advance(wire.MAX_TIMEOUT_MS / 1000 + 1)  # past even "never" (7 days)
    inner.purge()
    found = samples(generate_latest(registry).decode())
    assert value(found, "distcache_expirations_total") == 2
    assert value(found, "distcache_session_bytes") == 0


def test_client_collector_with_no_server():
    link = ServerLink()
    registry = registry_of(ClientCollector(link))
    found = samples(generate_latest(registry).decode())
    assert value(found, "distcache_client_upstream_up") == 0
    assert value(found, "distcache_client_requests_in_flight") == 0
    assert value(found, "distcache_client_reconnects_total") == 0


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        return samples(reply.read().decode())


def test_dc_server_and_dc_client_serve_metrics(sockdir):
    server_metrics, client_metrics = free_tcp_port(), free_tcp_port()
    mc_port = free_tcp_port()
    server = DcServerProcess(os.path.join(sockdir, "cache"),
                             extra=["-metrics", f"tcp:{server_metrics}:interface=127.0.0.1",
                                    "-memcache-listen", f"IP:127.0.0.1:{mc_port}"]).start()
    client = DcClientProcess(os.path.join(sockdir, "scache"), server.address, retry_ms=200,
                             extra=["-metrics", f"IP:127.0.0.1:{client_metrics}"])
    try:
        client.start()
        for port in (server_metrics, client_metrics, mc_port):
            wait_until_connectable(socket.AF_INET, ("127.0.0.1", port))
        cache = SessionCache(client.address)
        assert wait_for(lambda: cache.add(b"sid", b"session", 60000))
        assert cache.get(b"sid") == b"session"
        assert cache.get(b"other") is None
        assert ask(mc_port, b"get sid\r\n", until=b"END\r\n").startswith(b"VALUE sid")
        found = scrape(server_metrics)
        assert value(found, "distcache_get_hits_total") == 2
        assert value(found, "distcache_get_misses_total") == 1
        assert value(found, "distcache_sessions") == 1
        assert value(found, "distcache_session_bytes") == 7
        assert value(found, "distcache_connections", protocol="distcache") == 1
        found = scrape(client_metrics)
        assert value(found, "distcache_client_upstream_up") == 1
        assert value(found, "distcache_client_requests_relayed_total") >= 3
        server.stop()
        assert wait_for(lambda: value(scrape(client_metrics), "distcache_client_upstream_up") == 0)
        with pytest.raises(CacheUnavailable):  # dc_client answers empty while away
            cache.get(b"sid")
        found = scrape(client_metrics)
        assert value(found, "distcache_client_offline_answers_total") >= 1
        server.start()
        assert wait_for(lambda: value(scrape(client_metrics), "distcache_client_upstream_up") == 1)
        assert value(scrape(client_metrics), "distcache_client_reconnects_total") == 1
    finally:
        client.stop()
        server.stop()


@pytest_twisted.inlineCallbacks
def test_a_metrics_listener_limits_its_connections_and_still_answers_a_scrape():
    registry = registry_of(ClientCollector(ServerLink(task.Clock())))
    listener = metrics_listener("IP:127.0.0.1:0", registry)
    assert listener.factory.timeOut == METRICS_IDLE_SECONDS  # a silent connection is closed
    listener.startService()
    held = []
    try:
        port = listener.port.getHost().port
        for _ in range(METRICS_LIMITS.per_peer):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield poll(lambda: listener.limited.connections == METRICS_LIMITS.per_peer)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        yield poll(lambda: listener.limited.refused == 1)
        try:
            assert extra.recv(1) == b""  # refused: closed at once
        except ConnectionResetError:
            pass  # or aborted
        finally:
            extra.close()
        held.pop().close()
        yield poll(lambda: listener.limited.connections == METRICS_LIMITS.per_peer - 1)
        text = yield threads.deferToThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read())
        assert b"distcache_client_upstream_up" in text
    finally:
        for s in held:
            s.close()
        yield listener.stopService()
