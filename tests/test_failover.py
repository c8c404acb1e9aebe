"""dc_client's server list: the link's table, the order of attempts and the return to the first.

Everything runs on ``task.Clock`` with in-memory server endpoints (``MemoryServer``).
"""

from __future__ import annotations

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from distcache import wire
from distcache.proxy import LocalFactory
from distcache.upstream import _INPUTS, _TABLE, LinkState, ServerLink

from proxy_support import MemoryServer

RETRY = 5.0


class Farm:
    """A dc_client link over in-memory servers, and local clients on StringTransports."""

    def __init__(self, *up: bool):
        self.clock = task.Clock()
        self.servers = [MemoryServer(f"/run/dc_server{i + 1}", up=u) for i, u in enumerate(up)]
        self.link = ServerLink(clock=self.clock, retry=RETRY,
                               servers=[f"UNIX:/run/dc_server{i + 1}" for i in range(len(up))])
        self.factory = LocalFactory(self.link, clock=self.clock)

    def start(self):
        self.link.start(self.servers)
        return self

    def local(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def attempts(self):
        return [s.attempts for s in self.servers]


def replies(transport):
    return wire.Decoder(expect=True).feed(transport.value())


def link_lines(events):
    return [formatEvent(e) for e in events
            if e.get("log_namespace", "").startswith("distcache.upstream")]


# The table: every input in every state, run on a real link.

def _into(state: LinkState) -> Farm:
    """A started two-server link brought into ``state`` through its own inputs."""
    farm = Farm(True, True)
    s1, s2 = farm.servers
    if state is LinkState.STARTING:
        s1.hold = True
        farm.start()
    elif state is LinkState.CONNECTED:
        s1.up = False
        farm.start()                       # on the second server, probing the first
        farm.clock.advance(RETRY)          # a probe attempt has failed; the timer runs again
        s1.hold = True
        farm.clock.advance(RETRY)          # a probe attempt is pending
    elif state is LinkState.BLOCKED:
        s1.up = False
        farm.start()
        s2.protocol.pauseProducing()
    elif state is LinkState.DROPPING:
        farm.start()
        s1.protocol.dataReceived(b"\xff" * 14)
    elif state is LinkState.AWAY:
        s1.up = s2.up = False
        farm.start()
    elif state is LinkState.STOPPED:
        farm.start()
        farm.link.stop()
    assert farm.link.state is state
    return farm


def _feed(farm: Farm, name: str) -> None:
    """Give the link ``name`` as its callers do."""
    link = farm.link
    s1, s2 = farm.servers
    current = link.upstream
    for server in farm.servers:   # what the outputs start stays pending: one step is seen
        server.hold = True
    if name == "start":
        link.start(farm.servers)
    elif name == "connected":
        link._trying = 0
        s1.hold = False
        s1.up = True
        s1.connect(link._factory)
        s1.hold = True
    elif name in ("attempt_failed", "round_failed"):
        link._trying = 0 if name == "attempt_failed" else len(farm.servers) - 1
        link._input(name, "Connection was refused by other side.")
    elif name == "retry_due":
        link._input("retry_due")
    elif name == "lost":
        if (current or link._dropping) is not None:
            (current or link._dropping).connectionLost(_done())
        else:
            link._input("lost", "Connection was closed cleanly.")
    elif name == "malformed":
        if current is not None:
            current.dataReceived(b"\xff" * 14)
        else:
            link._input("malformed", "garbage")
    elif name == "full":
        link._input("full")
    elif name == "ready":
        link._input("ready")
    elif name == "stop":
        link.stop()


def _done():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure
    return Failure(ConnectionDone())


@pytest.mark.parametrize("state", list(LinkState), ids=lambda s: s.value)
@pytest.mark.parametrize("name", _INPUTS)
def test_every_input_in_every_state_goes_where_the_table_says(state, name):
    farm = _into(state)
    proto, transport = farm.local()
    proto.dataReceived(wire.encode_request(7, wire.OP_HAVE, b"k"))
    expected, outputs = _TABLE[state, name]
    assert all(callable(getattr(ServerLink, o)) for o in outputs)
    _feed(farm, name)
    assert farm.link.state is expected
    # Whatever happened, the local request was answered or is still in flight.
    assert len(replies(transport)) + farm.link.outstanding == 1
    # Requests still go somewhere sensible afterwards.
    proto.dataReceived(wire.encode_request(8, wire.OP_HAVE, b"k"))
    if farm.link.upstream is None:
        # answered empty, in order once the connections still open have closed
        for protocol in list(farm.link._open):
            protocol.connectionLost(_done())
        assert replies(transport)[-1] == wire.Message(True, 8, wire.OP_HAVE, b"")
        assert len(replies(transport)) == 2


# Order of attempts and the return to the first server.

def test_the_first_server_that_answers_is_used_and_nothing_else_is_tried():
    farm = Farm(True, True).start()
    assert farm.link.at == 0 and farm.attempts() == [1, 0]
    farm.clock.advance(10 * RETRY)
    assert farm.attempts() == [1, 0] and not farm.clock.getDelayedCalls()


def test_a_first_server_away_at_start_fails_over_to_the_next_at_once():
    farm = Farm(False, False, True)
    with capturedLogs() as events:
        farm.start()
    assert farm.attempts() == [1, 1, 1] and farm.link.at == 2
    assert farm.link.state is LinkState.CONNECTED
    assert link_lines(events) == [
        "connected to the server at UNIX:/run/dc_server3 (server 3 of 3), since "
        "UNIX:/run/dc_server1: Connection was refused by other side.; "
        "UNIX:/run/dc_server2: Connection was refused by other side."]


def test_earlier_servers_are_probed_every_retry_period_and_the_first_to_answer_is_used():
    farm = Farm(False, False, True).start()
    s1, s2, s3 = farm.servers
    farm.clock.advance(RETRY - 0.01)
    assert farm.attempts() == [1, 1, 1]
    farm.clock.advance(0.01)
    assert farm.attempts() == [2, 2, 1]      # one probe round: first, then second
    s2.up = True
    farm.clock.advance(RETRY)
    assert farm.attempts() == [3, 3, 1] and farm.link.at == 1
    s1.up = True
    farm.clock.advance(RETRY)
    assert farm.attempts() == [4, 3, 1] and farm.link.at == 0
    farm.clock.advance(10 * RETRY)            # on the first: no more probes
    assert farm.attempts() == [4, 3, 1] and not farm.clock.getDelayedCalls()


def test_switching_back_finishes_requests_in_flight_and_keeps_each_clients_order():
    farm = Farm(False, True).start()
    s1, s2 = farm.servers
    proto, transport = farm.local()
    other, other_transport = farm.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a")
                       + wire.encode_request(2, wire.OP_GET, b"b"))
    on_s2 = s2.requests()
    assert len(on_s2) == 2
    s1.up = True
    with capturedLogs() as events:
        farm.clock.advance(RETRY)
    assert farm.link.at == 0 and farm.link.outstanding == 2
    assert link_lines(events) == [
        "switched to the server at UNIX:/run/dc_server1 (server 1 of 2), which answers "
        "again; the connection to UNIX:/run/dc_server2 finishes its 2 requests in flight "
        "and closes"]
    # New requests go to the first server; the second still owes two replies.
    proto.dataReceived(wire.encode_request(3, wire.OP_GET, b"c"))
    other.dataReceived(wire.encode_request(9, wire.OP_HAVE, b"z"))
    on_s1 = s1.requests()
    assert [m.payload for m in on_s1] == [b"c", b"z"] and s2.requests() == []
    s1.answer(on_s1, b"1")
    assert replies(other_transport) == [wire.Message(True, 9, wire.OP_HAVE, b"1")]
    assert transport.value() == b""          # 3 waits behind 1 and 2
    s2.answer(on_s2[1:], b"2")
    assert transport.value() == b"" and not s2.transport.disconnecting
    s2.answer(on_s2[:1], b"2")
    assert [(m.uid, m.payload) for m in replies(transport)] == [(1, b"2"), (2, b"2"), (3, b"1")]
    assert s2.transport.disconnecting         # drained, then closed
    s2.drop()
    assert farm.link.at == 0 and farm.link.state is LinkState.CONNECTED
    assert farm.link.outstanding == 0 and farm.link.answered_disconnected == 0


def test_a_replaced_connection_that_drops_answers_its_requests_disconnected():
    farm = Farm(False, True).start()
    s1, s2 = farm.servers
    proto, transport = farm.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
    s1.up = True
    farm.clock.advance(RETRY)
    proto.dataReceived(wire.encode_request(2, wire.OP_GET, b"b"))
    s1.answer(s1.requests(), b"1")
    s2.drop()
    assert [(m.uid, m.payload) for m in replies(transport)] == [(1, b"\x02"), (2, b"1")]
    assert farm.link.state is LinkState.CONNECTED and farm.link.at == 0


def test_a_replaced_connection_with_nothing_in_flight_closes_at_once():
    farm = Farm(False, True).start()
    s1, s2 = farm.servers
    s1.up = True
    farm.clock.advance(RETRY)
    assert s2.transport.disconnecting and farm.link.at == 0


def test_losing_the_first_fails_over_at_once_and_requests_in_flight_get_disconnected():
    farm = Farm(True, True).start()
    s1, s2 = farm.servers
    proto, transport = farm.local()
    farm.clock.advance(60)
    proto.dataReceived(wire.encode_request(1, wire.OP_ADD, b"x" * 20))
    s1.up = False
    with capturedLogs() as events:
        s1.drop()
    assert farm.attempts() == [2, 1] and farm.link.at == 1
    proto.dataReceived(wire.encode_request(2, wire.OP_HAVE, b"x"))
    s2.answer(s2.requests(), b"\x01")
    assert [(m.uid, m.payload) for m in replies(transport)] == [(1, b"\x02"), (2, b"\x01")]
    assert link_lines(events) == [
        "lost the server at UNIX:/run/dc_server1 (Connection was closed cleanly.); 1 requests "
        "in flight answered DISCONNECTED, later ones empty until a server answers",
        "switched to the server at UNIX:/run/dc_server2 (server 2 of 2) after 0s, since "
        "UNIX:/run/dc_server1: Connection was refused by other side.; 0 requests were "
        "answered empty meanwhile"]
    # ... and it goes back to the first within one retry period of its return.
    s1.up = True
    farm.clock.advance(RETRY)
    assert farm.link.at == 0 and farm.attempts() == [3, 1]


def test_losing_a_later_server_starts_over_from_the_first():
    farm = Farm(False, True, True).start()
    s1, s2, s3 = farm.servers
    farm.clock.pump([RETRY] * 12)          # probes of the first failed meanwhile
    s2.up = False
    s2.drop()
    assert farm.link.at == 2 and farm.attempts() == [1 + 12 + 1, 2, 1]


def test_a_server_that_closes_a_young_connection_is_not_tried_again_within_the_period():
    farm = Farm(True, False).start()
    s1, s2 = farm.servers
    farm.clock.advance(1)
    s1.drop()                             # accepted, then closed after one second
    assert farm.attempts() == [1, 1] and farm.link.state is LinkState.AWAY
    farm.clock.advance(RETRY - 0.01)
    assert farm.attempts() == [1, 1]
    farm.clock.advance(0.01)
    assert farm.attempts() == [2, 1] and farm.link.at == 0


def test_a_young_connection_lost_fails_over_at_once():
    farm = Farm(True, True).start()
    s1, s2 = farm.servers
    s1.drop()
    assert farm.attempts() == [1, 1] and farm.link.at == 1
    farm.clock.advance(RETRY)             # the probe of the first comes one period later
    assert farm.attempts() == [2, 1] and farm.link.at == 0


def test_the_only_server_closing_a_young_connection_waits_out_the_period():
    farm = Farm(True).start()
    (s1,) = farm.servers
    farm.clock.advance(2)
    s1.drop()
    farm.clock.advance(RETRY - 2 - 0.01)
    assert farm.attempts() == [1]
    farm.clock.advance(0.01)
    assert farm.attempts() == [2] and farm.link.at == 0


def test_no_server_reachable_repeats_rounds_every_period_and_reminds_rarely():
    farm = Farm(False, False)
    with capturedLogs() as events:
        farm.start()
        for _ in range(61):
            farm.clock.advance(RETRY)
    assert farm.attempts() == [62, 62] and farm.link.state is LinkState.AWAY
    refused = "Connection was refused by other side."
    assert link_lines(events) == [
        f"cannot reach any server (UNIX:/run/dc_server1: {refused}; UNIX:/run/dc_server2: "
        f"{refused}); answering requests empty until a server answers",
        f"no server is reachable after 5m00s (UNIX:/run/dc_server1: {refused}; "
        f"UNIX:/run/dc_server2: {refused}); 0 requests answered empty so far"]


def test_stop_closes_every_connection_and_ends_attempts():
    farm = Farm(False, True).start()
    s1, s2 = farm.servers
    proto, transport = farm.local()
    proto.dataReceived(wire.encode_request(1, wire.OP_GET, b"a"))
    s1.hold = True
    farm.clock.advance(RETRY)               # a probe of the first is pending
    (_, attempt), = s1.pending
    done = farm.link.stop()
    assert attempt.called                    # cancelled
    assert s2.transport.disconnecting and not done.called
    s2.drop()
    assert done.called and replies(transport) == [wire.Message(True, 1, wire.OP_GET, b"\x02")]
    assert not farm.clock.getDelayedCalls() and farm.link.state is LinkState.STOPPED
