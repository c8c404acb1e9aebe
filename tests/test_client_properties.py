"""Whatever bytes a server sends, both clients answer with a value or a CacheError, never
another exception, never a hang, and every call is answered exactly once."""

from __future__ import annotations

import socket

from hypothesis import given, settings, strategies as st
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from distcache import wire
from distcache.blocking import _exchange
from distcache.client import CacheClientProtocol
from distcache.replies import CacheError

ops = st.sampled_from([wire.OP_ADD, wire.OP_GET, wire.OP_REMOVE, wire.OP_HAVE])
payloads = st.one_of(st.sampled_from([b"", b"\x00", b"\x01", b"\x02", b"\x65"]),
                     st.binary(max_size=3000))
replies = st.builds(lambda uid, op, payload: wire.encode_response(uid, op, payload),
                    st.integers(0, 8), ops, payloads)
streams = st.lists(st.one_of(replies, st.binary(max_size=40)), max_size=8).map(b"".join)


def chunks(data: bytes, cuts):
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in points + [len(data)]:
        out.append(data[last:point])
        last = point
    return out


@settings(max_examples=300, deadline=None)
@given(streams, st.lists(st.integers(0, 10000), max_size=6), st.lists(ops, min_size=1,
                                                                     max_size=6))
def test_twisted_client_answers_every_call_once(stream, cuts, calls):
    protocol = CacheClientProtocol()
    protocol.makeConnection(StringTransport())
    makers = {wire.OP_ADD: lambda: protocol.add_status(b"id", b"data", 1000),
              wire.OP_GET: lambda: protocol.get(b"id"),
              wire.OP_REMOVE: lambda: protocol.remove(b"id"),
              wire.OP_HAVE: lambda: protocol.has(b"id")}
    outcomes = [[] for _ in calls]
    for op, seen in zip(calls, outcomes):
        makers[op]().addBoth(seen.append)
    for piece in chunks(stream, cuts):
        protocol.dataReceived(piece)
    protocol.connectionLost(Failure(ConnectionError("end of test")))
    for seen in outcomes:
        assert len(seen) == 1
        if isinstance(seen[0], Failure):
            assert seen[0].check(CacheError), seen[0]


@settings(max_examples=150, deadline=None)
@given(streams, ops)
def test_blocking_exchange_returns_or_raises_a_cache_error(stream, op):
    client, server = socket.socketpair()
    try:
        client.settimeout(2)
        server.sendall(stream)
        server.shutdown(socket.SHUT_WR)  # still reading, so the request can be sent
        try:
            payload = _exchange(client, wire.encode_request(3, op, b"id"), 3, op)
        except CacheError:
            return
        assert wire.encode_response(3, op, payload) == stream
    finally:
        client.close()
        server.close()


def test_blocking_exchange_of_a_reply_cut_into_frames():
    client, server = socket.socketpair()
    try:
        client.settimeout(2)
        data = bytes(range(256)) * 40
        server.sendall(wire.encode_response(9, wire.OP_GET, data))
        assert _exchange(client, wire.encode_request(9, wire.OP_GET, b"id"), 9,
                         wire.OP_GET) == data
    finally:
        client.close()
        server.close()
