"""Listener: binds in the privileged step, applies socket ownership, fails start-up clearly."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage

from distcache import listening
from distcache.address import AddressError
from distcache.listening import Listener, SocketOwnership


def factory():
    return Factory.forProtocol(Protocol)


@pytest_twisted.inlineCallbacks
def test_a_unix_socket_is_bound_with_its_mode_before_start(sockdir):
    path = os.path.join(sockdir, "cache")
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    listener = Listener(f"UNIX:{path}", factory(), SocketOwnership(me, group, 0o640))
    listener.privilegedStartService()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        port = listener.port
        listener.startService()        # already bound: not bound again
        assert listener.port is port and listener.running
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)
        probe.close()
    finally:
        yield listener.stopService()
    assert listener.port is None


@pytest_twisted.inlineCallbacks
def test_start_alone_binds_a_tcp_port():
    listener = Listener("IP:127.0.0.1:0", factory())
    listener.startService()
    try:
        host = listener.port.getHost()
        assert host.host == "127.0.0.1" and host.port > 0
        socket.create_connection((host.host, host.port), timeout=5).close()
    finally:
        yield listener.stopService()


def test_a_socket_in_use_fails_start_up(sockdir):
    path = os.path.join(sockdir, "busy")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    try:
        with pytest.raises(AddressError, match="in use"):
            Listener(f"UNIX:{path}", factory()).privilegedStartService()
    finally:
        other.close()


def test_a_port_in_use_fails_start_up():
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    try:
        listener = Listener(f"IP:127.0.0.1:{other.getsockname()[1]}", factory())
        with pytest.raises(Exception, match="(?i)address already in use"):
            listener.privilegedStartService()
        assert listener.port is None
    finally:
        other.close()


def test_a_bad_address_is_refused_when_built():
    with pytest.raises(AddressError):
        Listener("nowhere", factory())


@pytest.mark.parametrize("text,mode", [("0660", 0o660), ("600", 0o600), ("7777", 0o7777)])
def test_perms(text, mode):
    assert listening.parse_perms(text) == mode


@pytest.mark.parametrize("text", ["rw", "0999", "17777", "-1"])
def test_bad_perms(text):
    with pytest.raises(usage.UsageError):
        listening.parse_perms(text)


def test_owner_and_group_names_are_checked():
    listening.check_owner("0")
    listening.check_owner(pwd.getpwuid(os.getuid()).pw_name)
    listening.check_group(grp.getgrgid(os.getgid()).gr_name)
    listening.check_owner(None)
    with pytest.raises(usage.UsageError, match="no such user"):
        listening.check_owner("no-such-user-here")
    with pytest.raises(usage.UsageError, match="no such group"):
        listening.check_group("no-such-group-here")


# --- connection limits -------------------------------------------------------------

from twisted.internet.address import IPv4Address, UNIXAddress  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import Logger, formatEvent  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402

from distcache.listening import ConnectionLimits, LimitedFactory  # noqa: E402
from polling import poll_until as poll  # noqa: E402


class Counted(Protocol):
    lost = 0

    def connectionLost(self, reason):
        Counted.lost += 1
        self.why = reason


def limited(total=0, per_peer=0):
    events = []
    inner = Factory.forProtocol(Counted)
    lf = LimitedFactory(inner, ConnectionLimits(total, per_peer), Clock(), name="test")
    lf.log = Logger(namespace="test", observer=events.append)
    lf._warnings.log = lf.log
    return lf, events


def connect(lf, host="10.0.0.1", port=40000):
    addr = UNIXAddress(None) if host is None else IPv4Address("TCP", host, port)
    proto = lf.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def lose(proto):
    proto.connectionLost(Failure(ConnectionDone()))


def texts(events):
    return [formatEvent(e) for e in events]


def test_the_total_limit_refuses_and_logs_one_episode():
    lf, events = limited(total=3)
    protos = [connect(lf, f"10.0.0.{n}")[0] for n in range(3)]
    assert lf.connections == 3 and all(isinstance(p, Counted) for p in protos)
    refused = [connect(lf, "10.0.0.9") for _ in range(5)]
    assert all(t.disconnecting for _, t in refused)
    assert not any(isinstance(p, Counted) for p, _ in refused)
    assert lf.connections == 3 and lf.refused == 5
    assert len(events) == 1 and "3 connections, the most allowed" in texts(events)[0]
    lose(protos[0])
    assert lf.connections == 2
    assert texts(events)[1] == ("test: back under the connection limit (2 connections); "
                                "5 connections were refused meanwhile")
    again, _ = connect(lf)
    assert isinstance(again, Counted) and lf.connections == 3
    connect(lf)  # a new episode is logged again
    assert len(events) == 3 and "the most allowed" in texts(events)[2]


def test_a_connection_is_counted_out_once_and_the_protocol_still_hears_it():
    lf, _ = limited(total=2)
    before = Counted.lost
    proto, _ = connect(lf)
    lose(proto)
    lose(proto)  # a second call reaches only the protocol's own method
    assert lf.connections == 0 and Counted.lost == before + 2
    assert "connectionLost" not in vars(proto)


def test_the_per_peer_limit_counts_each_address_apart():
    lf, events = limited(per_peer=2)
    a = [connect(lf, "10.0.0.1", 1000 + n)[0] for n in range(2)]
    _, refused = connect(lf, "10.0.0.1", 2000)
    assert refused.disconnecting
    b, _ = connect(lf, "10.0.0.2")
    assert isinstance(b, Counted) and lf.connections == 3 and lf.peers() == 2
    connect(lf, "10.0.0.1", 2001)
    assert lf.refused == 2 and len(events) == 1
    assert "10.0.0.1 has 2 connections" in texts(events)[0]
    lose(a[0])
    assert "10.0.0.1 is back under its connection limit; 2 of its" in texts(events)[1]
    lose(a[1])
    lose(b)
    assert lf.connections == 0 and lf.peers() == 0


def test_unix_peers_have_no_per_peer_limit():
    lf, events = limited(total=0, per_peer=1)
    protos = [connect(lf, None)[0] for _ in range(5)]
    assert all(isinstance(p, Counted) for p in protos) and lf.connections == 5
    assert events == []


def test_limits_are_parsed_as_whole_numbers_zero_meaning_none():
    assert listening.parse_limit("max-connections", "0") == 0
    assert listening.parse_limit("max-connections", "17") == 17
    for bad in ("-1", "many", None):
        with pytest.raises(usage.UsageError, match="--max-connections"):
            listening.parse_limit("max-connections", bad)


@pytest_twisted.inlineCallbacks
def test_a_real_listener_refuses_over_its_limit_and_takes_again_when_under():
    listener = Listener("IP:127.0.0.1:0", Factory.forProtocol(Protocol),
                        limits=ConnectionLimits(total=2))
    listener.startService()
    held = []
    try:
        port = listener.port.getHost().port
        for _ in range(2):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield poll(lambda: listener.limited.connections == 2)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        yield poll(lambda: listener.limited.refused == 1)
        assert closed_by_peer(extra)
        held.pop().close()
        yield poll(lambda: listener.limited.connections == 1)
        held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        yield poll(lambda: listener.limited.connections == 2)
    finally:
        for s in held:
            s.close()
        yield listener.stopService()


def closed_by_peer(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


# --- unix socket modes ---------------------------------------------------------------

@pytest.mark.parametrize("ownership,mode", [
    (SocketOwnership(), 0o600),
    (SocketOwnership(group=grp.getgrgid(os.getgid()).gr_name), 0o660),
    (SocketOwnership(owner=str(os.getuid())), 0o600),
    (SocketOwnership(perms=0o666), 0o666),
])
@pytest_twisted.inlineCallbacks
def test_a_unix_socket_is_owner_only_unless_the_flags_open_it(sockdir, ownership, mode):
    path = os.path.join(sockdir, "modes")
    listener = Listener(f"UNIX:{path}", factory(), ownership)
    listener.privilegedStartService()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    finally:
        yield listener.stopService()


def test_a_unix_endpoint_string_keeps_the_mode_it_names():
    assert listening.socket_mode(SocketOwnership(), "unix:/x:mode=644") is None
    assert listening.socket_mode(SocketOwnership(), "unix:/x") == 0o600
    assert listening.socket_mode(SocketOwnership(), "UNIX:/x") is None  # bound 0600
    assert listening.socket_mode(SocketOwnership(perms=0o640), "unix:/x:mode=644") == 0o640


@pytest_twisted.inlineCallbacks
def test_a_unix_endpoint_string_without_a_mode_is_owner_only_too(sockdir):
    path = os.path.join(sockdir, "raw")
    listener = Listener(f"unix:{path}", factory())
    listener.privilegedStartService()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        yield listener.stopService()
