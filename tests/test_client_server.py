"""The Twisted client against a real in-process dc_server over unix and TCP sockets."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from distcache import wire
from distcache.client import CacheConnectionLost, connect
from distcache.server import CacheServerFactory
from distcache.store import SessionStore


@pytest_twisted.inlineCallbacks
def serve(endpoint, sessions=512):
    factory = CacheServerFactory(SessionStore(reactor, sessions), clock=reactor)
    port = yield endpoint.listen(factory)
    return port


@pytest_twisted.inlineCallbacks
def test_every_operation_over_a_unix_socket(sockdir):
    path = os.path.join(sockdir, "cache")
    port = yield serve(UNIXServerEndpoint(reactor, path))
    cache = yield connect(reactor, f"UNIX:{path}")
    try:
        assert (yield cache.add(b"session-1", b"data-1", 60000)) is True
        assert (yield cache.add_status(b"session-1", b"data-1", 60000)) == \
            wire.ERR_MATCHING_SESSION
        assert (yield cache.has(b"session-1")) is True
        assert (yield cache.get(b"session-1")) == b"data-1"
        assert (yield cache.remove(b"session-1")) is True
        assert (yield cache.remove(b"session-1")) is False
        assert (yield cache.get(b"session-1")) is None
        assert (yield cache.has(b"session-1")) is False
    finally:
        cache.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_pipelined_requests_over_tcp_with_a_twisted_endpoint_string():
    port = yield serve(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    where = f"tcp:host=127.0.0.1:port={port.getHost().port}"
    cache = yield connect(reactor, where)
    try:
        ids = [b"pipelined-%04d" % i for i in range(200)]
        added = yield defer.gatherResults(
            [cache.add(i, i * 50, 60000) for i in ids])
        assert added == [True] * 200
        # All 400 requests go out before the first reply comes back.
        gets = [cache.get(i) for i in ids]
        haves = [cache.has(i) for i in ids]
        assert cache.outstanding == 400
        assert (yield defer.gatherResults(gets)) == [i * 50 for i in ids]
        assert (yield defer.gatherResults(haves)) == [True] * 200
        big = bytes(range(256)) * 100  # spans 13 frames each way
        assert (yield cache.add(b"big", big, 60000)) is True
        assert (yield cache.get(b"big")) == big
    finally:
        cache.close()
        yield port.stopListening()


class HangUpOnRequest(Protocol):
    """A server that reads the requests and closes without answering."""

    def dataReceived(self, data):
        self.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_server_hanging_up_fails_every_outstanding_call(sockdir):
    path = os.path.join(sockdir, "cache")
    port = yield UNIXServerEndpoint(reactor, path).listen(Factory.forProtocol(HangUpOnRequest))
    cache = yield connect(reactor, f"UNIX:{path}")
    try:
        calls = [cache.get(b"s"), cache.has(b"t"), cache.add(b"u", b"v", 1000)]
        results = yield defer.DeferredList(calls, consumeErrors=True)
        for ok, failure in results:
            assert not ok and failure.check(CacheConnectionLost)
        later = yield defer.DeferredList([cache.has(b"s")], consumeErrors=True)
        assert not later[0][0] and later[0][1].check(CacheConnectionLost)
    finally:
        yield port.stopListening()
