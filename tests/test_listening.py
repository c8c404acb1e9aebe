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
