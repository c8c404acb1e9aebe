"""Each tool's listeners refuse connections over their limits, in total and per IP peer.

Real sockets on loopback: peers 127.0.0.1, .2 and .3 are distinct addresses, so one
test sees both the per-peer and the total limit of a tool's own listener.
"""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor

from distcache import client_tap, server_tap, snoop_tap, wire
from distcache.listening import ConnectionLimits, Listener
from distcache.server import CacheServerFactory
from distcache.store import SessionStore

from netutil import free_port
from polling import poll_until

LIMITS = ConnectionLimits(total=3, per_peer=2)
HAVE = wire.encode_request(7, wire.OP_HAVE, b"some-session")


def open_from(source: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def peer_closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def answered(sock, got: bytearray) -> bool:
    try:
        got += sock.recv(4096)
    except BlockingIOError:
        pass
    return len(got) > 0


@pytest_twisted.inlineCallbacks
def check_limits(service, port: int):
    """Two from .1 pass, a third from .1 is refused, one from .2 passes, .3 is over the total."""
    service.privilegedStartService()
    service.startService()
    sockets = []
    try:
        (limited,) = [s.limited for s in service if isinstance(s, Listener)
                      and s.address.port == port]
        for _ in range(2):
            sockets.append(open_from("127.0.0.1", port))
        yield poll_until(lambda: limited.connections == 2)
        over_peer = open_from("127.0.0.1", port)
        sockets.append(over_peer)
        yield poll_until(lambda: peer_closed(over_peer))
        other = open_from("127.0.0.2", port)
        sockets.append(other)
        yield poll_until(lambda: limited.connections == 3)
        over_total = open_from("127.0.0.3", port)
        sockets.append(over_total)
        yield poll_until(lambda: peer_closed(over_total))
        assert limited.refused == 2
        # the connections within the limits are served
        other.send(HAVE)
        got = bytearray()
        yield poll_until(lambda: answered(other, got))
        # and when one closes, the address may connect again
        sockets[0].close()
        yield poll_until(lambda: limited.connections == 2)
        sockets.append(open_from("127.0.0.1", port))
        yield poll_until(lambda: limited.connections == 3)
    finally:
        for sock in sockets:
            sock.close()
        yield service.stopService()


def test_dc_server_limits_its_listeners():
    port = free_port()
    service = server_tap.CacheServerService([f"IP:127.0.0.1:{port}"], limits=LIMITS)
    return check_limits(service, port)


def test_dc_client_limits_its_local_listener():
    port = free_port()
    service = client_tap.ClientProxyService(f"IP:127.0.0.1:{port}", f"IP:127.0.0.1:{free_port()}",
                                            limits=LIMITS)
    return check_limits(service, port)


@pytest_twisted.inlineCallbacks
def test_dc_snoop_limits_its_listener(sockdir):
    server = reactor.listenUNIX(os.path.join(sockdir, "server"),
                                CacheServerFactory(SessionStore(reactor, 16)))
    try:
        port = free_port()
        service = snoop_tap.SnoopService(f"IP:127.0.0.1:{port}",
                                         f"UNIX:{os.path.join(sockdir, 'server')}",
                                         limits=LIMITS, report=lambda line: None)
        yield check_limits(service, port)
    finally:
        yield server.stopListening()


@pytest.mark.parametrize("options,tool", [(server_tap.Options, "dc_server"),
                                          (client_tap.Options, "dc_client"),
                                          (snoop_tap.Options, "dc_snoop")])
def test_each_tool_has_limit_options_with_its_own_defaults(options, tool):
    required = {"dc_server": ["--listen", "IP:1"], "dc_client": ["--server", "IP:1"],
                "dc_snoop": ["--listen", "IP:1", "--server", "IP:2"]}[tool]
    o = options()
    o.parseOptions(required)
    assert o["limits"] == options.default_limits
    assert o["limits"].total >= 1000 and o["limits"].per_peer >= 1000
    o = options()
    o.parseOptions(required + ["--max-connections", "10", "--max-connections-per-peer", "0"])
    assert o["limits"] == ConnectionLimits(10, 0)
    from twisted.python import usage
    with pytest.raises(usage.UsageError, match="--max-connections-per-peer"):
        options().parseOptions(required + ["--max-connections-per-peer", "-3"])


def test_dc_server_default_admits_the_two_thousand_connection_burst():
    assert server_tap.Options.default_limits.per_peer >= 2000


def test_the_c_form_flags_reach_the_limits():
    from distcache import cflags
    argv, _ = cflags.translate("dc_server", ["-listen", "IP:9001", "-max-connections", "5",
                                             "-max-connections-per-peer", "2"])
    assert "--max-connections" in argv and "--max-connections-per-peer" in argv
