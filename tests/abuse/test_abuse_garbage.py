"""Hypothesis-driven garbage at every listener of live processes.

Each example is one connection that sends arbitrary bytes (raw binary, a
well-formed distcache header followed by junk, text lines) and hangs up.
Afterwards the listener's process must answer a correct request, hold the data
stored before, keep its memory within a bound, and have logged a bounded number
of bytes for all those malformed connections.
"""

import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from abuse_support import (rss_bound, distcache_get, distcache_roundtrip, door_hello_ok, memcache_get,
                           memcache_roundtrip, metrics_ok, rss_kib)
from interop_support import dccp

EXAMPLES = 40
#: growth of the resident set a burst of malformed connections may cause (KiB)
RSS_BOUND_KIB = rss_bound(8 * 1024)
#: average log bytes per malformed connection: the cache tools log a limited burst of full
#: lines, then counts; dc_snoop reports every connection it relays (that is its job), in a
#: few lines however many bytes came; the door logs each control connection's violation
LOG_BYTES_PER_CONNECTION = {"cache": 200, "snoop": 1024, "door": 400}

garbage = st.one_of(
    st.binary(min_size=1, max_size=4096),
    # a distcache header that parses, then anything
    st.builds(lambda uid, op, size, tail: struct.pack(">IBIBBBH", 0x00110000, 1, uid, op, 0, 0,
                                                      size) + tail,
              st.integers(0, 2 ** 32 - 1), st.integers(0, 255), st.integers(0, 0xFFFF),
              st.binary(max_size=2048)),
    # lines of text, as the memcached, DCAP and HTTP listeners read
    st.lists(st.text(max_size=200), min_size=1, max_size=5).map(
        lambda lines: "\r\n".join(lines).encode("utf-8", "replace") + b"\n"),
)


def send_and_hang_up(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the listener may already have closed on the first bad byte


class Target:
    def __init__(self, name, kind, pid, port, log_size, log_text, probe, stored):
        self.name, self.kind, self.pid, self.port = name, kind, pid, port
        self.log_size, self.log_text, self.probe, self.stored = log_size, log_text, probe, stored


def cache_targets(stack):
    server, client, snoop = stack.server, stack.client, stack.snoop
    session = (b"kept-" + os.urandom(8).hex().encode(), os.urandom(500))
    key = (b"kept-" + os.urandom(8).hex().encode(), os.urandom(300))
    assert distcache_roundtrip(stack.server_port, *session)
    assert memcache_roundtrip(stack.server_memcache, *key)

    def session_kept(port):
        return lambda: distcache_get(port, session[0]) == session[1]

    def key_kept(port):
        return lambda: memcache_get(port, key[0]) == key[1]

    fresh = lambda probe, port: lambda: probe(port, os.urandom(8).hex().encode(), b"ok")  # noqa
    return [
        Target("dc_server distcache", "cache", server.pid, stack.server_port, server.log_size,
               server.log_text, fresh(distcache_roundtrip, stack.server_port),
               session_kept(stack.server_port)),
        Target("dc_server memcache", "cache", server.pid, stack.server_memcache, server.log_size,
               server.log_text, fresh(memcache_roundtrip, stack.server_memcache),
               key_kept(stack.server_memcache)),
        Target("dc_server metrics", "cache", server.pid, stack.server_metrics, server.log_size,
               server.log_text, lambda: metrics_ok(stack.server_metrics),
               session_kept(stack.server_port)),
        Target("dc_client local", "cache", client.pid, stack.client_port, client.log_size,
               client.log_text, fresh(distcache_roundtrip, stack.client_port),
               session_kept(stack.client_port)),
        Target("dc_client memcache", "cache", client.pid, stack.client_memcache, client.log_size,
               client.log_text, fresh(memcache_roundtrip, stack.client_memcache),
               key_kept(stack.client_memcache)),
        Target("dc_client metrics", "cache", client.pid, stack.client_metrics, client.log_size,
               client.log_text, lambda: metrics_ok(stack.client_metrics),
               session_kept(stack.client_port)),
        Target("dc_snoop", "snoop", snoop.pid, stack.snoop_port, snoop.log_size, snoop.log_text,
               fresh(distcache_roundtrip, stack.snoop_port), session_kept(stack.snoop_port)),
    ]


def door_targets(door, tmp_path):
    payload = os.urandom(100000)
    name = "/kept/garbage-%s" % os.urandom(4).hex()
    door.put(name, payload)

    def log_size():
        try:
            return os.path.getsize(door.log)
        except OSError:
            return 0

    def read_back():
        target = tmp_path / ("read-%s" % os.urandom(4).hex())
        rc, out = dccp("-A", door.url(name), target, timeout=60)
        return rc == 0 and target.read_bytes() == payload

    pid = door.proc.pid
    return [
        Target("door control", "door", pid, door.port, log_size, door.log_text,
               lambda: door_hello_ok(door.port), read_back),
        Target("door data port", "door", pid, door.data_port, log_size, door.log_text,
               read_back, read_back),
        Target("door metrics", "door", pid, door.metrics_port, log_size, door.log_text,
               lambda: metrics_ok(door.metrics_port), read_back),
    ]


def abuse(target):
    """Runs the garbage at one target; returns the figures measured."""
    assert target.probe(), "%s does not answer before the garbage" % target.name
    rss_before, log_before = rss_kib(target.pid), target.log_size()
    sent = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=garbage)
    def one_connection(data):
        send_and_hang_up(target.port, data)
        sent.append(len(data))

    one_connection()
    assert target.probe(), "%s no longer answers a correct request" % target.name
    assert target.stored(), "%s lost data stored before the garbage" % target.name
    rss_after, log_after = rss_kib(target.pid), target.log_size()
    figures = dict(connections=len(sent), bytes=sum(sent), rss_before=rss_before,
                   rss_after=rss_after, log_bytes=log_after - log_before)
    print("FIGURE garbage %s: %s" % (target.name, figures))
    assert rss_after - rss_before < RSS_BOUND_KIB, figures
    per_connection = LOG_BYTES_PER_CONNECTION[target.kind]
    assert log_after - log_before <= per_connection * len(sent), figures
    return figures


CACHE_LISTENERS = ["dc_server distcache", "dc_server memcache", "dc_server metrics",
                   "dc_client local", "dc_client memcache", "dc_client metrics", "dc_snoop"]
DOOR_LISTENERS = ["door control", "door data port", "door metrics"]


@pytest.mark.parametrize("name", CACHE_LISTENERS)
def test_garbage_at_cache_listener(cache_stack, name):
    target = {t.name: t for t in cache_targets(cache_stack)}[name]
    abuse(target)


@pytest.mark.parametrize("name", DOOR_LISTENERS)
def test_garbage_at_door_listener(door_proc, tmp_path, name):
    target = {t.name: t for t in door_targets(door_proc, tmp_path)}[name]
    abuse(target)
