"""dc_client's link survives dc_server closing it for being idle: it reconnects at once.

A link that waited for the retry period would answer the requests of that period
empty.  (A link younger than the retry period is not tried again at once, so that a
server that accepts and closes does not make dc_client spin: the server's idle timeout
is longer than dc_client's retry period, as their defaults are, 3600 s and 5 s.)
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import reactor

from distcache import client, client_tap, server_tap

from polling import poll_until


@pytest_twisted.inlineCallbacks
def test_an_idle_close_by_the_server_does_not_take_the_link_offline(sockdir):
    server = server_tap.CacheServerService([f"UNIX:{os.path.join(sockdir, 's')}"],
                                           idle_timeout=2.0)
    proxy = client_tap.ClientProxyService(f"UNIX:{os.path.join(sockdir, 'c')}",
                                          f"UNIX:{os.path.join(sockdir, 's')}",
                                          retry_ms=1500)
    for service in (server, proxy):
        service.privilegedStartService()
        service.startService()
    try:
        yield poll_until(lambda: proxy.link.connected)
        cache = yield client.connect(reactor, f"UNIX:{os.path.join(sockdir, 'c')}")
        yield cache.add(b"session", b"data", 600000)
        # the quiet link is closed by the server's idle sweep ...
        yield poll_until(lambda: server.factory.idle_closed >= 1, timeout=10)
        closed_at = reactor.seconds()
        # ... and back at once, not after the retry period
        yield poll_until(lambda: proxy.link.connects >= 2 and proxy.link.connected, timeout=5)
        assert reactor.seconds() - closed_at < 1.0
        assert (yield cache.get(b"session")) == b"data"
        assert proxy.link.answered_unreachable == 0
        cache.close()
    finally:
        yield proxy.stopService()
        yield server.stopService()
