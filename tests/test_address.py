"""Addresses: libnal forms, Twisted endpoint strings, stale sockets and how peers read."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from distcache import address
from distcache.address import Address, AddressError


@pytest.mark.parametrize("text,expected", [
    ("UNIX:/tmp/scache", Address("unix", "UNIX:/tmp/scache", path="/tmp/scache")),
    ("IP:cache.example.org:9001",
     Address("tcp", "IP:cache.example.org:9001", host="cache.example.org", port=9001)),
    ("IPv4:10.0.0.1:9001", Address("tcp", "IPv4:10.0.0.1:9001", host="10.0.0.1", port=9001)),
    ("IP:9001", Address("tcp", "IP:9001", port=9001)),
    ("IP::9001", Address("tcp", "IP::9001", port=9001)),
    ("IPv6:[::1]:9001", Address("tcp6", "IPv6:[::1]:9001", host="::1", port=9001)),
    ("IP:[fe80::1]:0", Address("tcp6", "IP:[fe80::1]:0", host="fe80::1", port=0)),
    ("unix:/run/x.sock", Address("unix", "unix:/run/x.sock", path="/run/x.sock")),
    ("unix:path=/run/x.sock:timeout=3",
     Address("unix", "unix:path=/run/x.sock:timeout=3", path="/run/x.sock")),
    ("unix:address=/run/a\\:b.sock", Address("unix", "unix:address=/run/a\\:b.sock",
                                             path="/run/a:b.sock")),
    ("tcp:host=h:port=1", Address("endpoint", "tcp:host=h:port=1")),
    ("systemd:domain=UNIX:index=0", Address("endpoint", "systemd:domain=UNIX:index=0")),
])
def test_forms(text, expected):
    parsed = address.parse(text)
    assert parsed == expected
    assert str(parsed) == text


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("/tmp/scache", "no prefix"),
    ("UNIX:", "no path"),
    ("IP:host:port", "bad port"),
    ("IP:host:65536", "bad port"),
    ("IP:host:-1", "bad port"),
    ("IPv6:::1:9001", "brackets"),
    ("IPv6:[::1]9001", "bad IPv6"),
    ("IP:[::1", "bad IPv6"),
    ("FD:3", "systemd:"),
    ("unix:timeout=3", "no path"),
])
def test_refused_forms(text, reason):
    with pytest.raises(AddressError, match=reason):
        address.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_is_an_address_error(text):
    try:
        parsed = address.parse(text)
    except AddressError:
        return
    assert parsed.text == text
    address.server_description(parsed)
    address.client_description(parsed)


@pytest.mark.parametrize("text,server,client", [
    ("UNIX:/tmp/a:b", "unix:/tmp/a\\:b:backlog=4096:mode=600", "unix:path=/tmp/a\\:b"),
    ("IP:127.0.0.1:9001", "tcp:9001:interface=127.0.0.1:backlog=4096",
     "tcp:host=127.0.0.1:port=9001"),
    ("IP:9001", "tcp:9001:backlog=4096", "tcp:host=127.0.0.1:port=9001"),
    ("IPv6:[::1]:9001", "tcp6:9001:interface=\\:\\:1:backlog=4096",
     "tcp:host=\\:\\:1:port=9001"),
    ("unix:/x:backlog=5", "unix:/x:backlog=5", "unix:/x:backlog=5"),
    ("ssl:9001", "ssl:9001", "ssl:9001"),
])
def test_endpoint_descriptions(text, server, client):
    parsed = address.parse(text)
    assert address.server_description(parsed) == server
    assert address.client_description(parsed) == client


def test_peers_read_as_an_operator_writes_them():
    text = address.address_text
    assert text(IPv4Address("TCP", "10.1.2.3", 40000)) == "10.1.2.3:40000"
    assert text(IPv6Address("TCP", "::1", 9001)) == "[::1]:9001"
    assert text(UNIXAddress(b"/run/dc_server.sock")) == "UNIX:/run/dc_server.sock"
    assert text(UNIXAddress("/run/x")) == "UNIX:/run/x"
    assert text(UNIXAddress(None)) == "UNIX (unnamed)"
    assert text(None) == "unknown"
    assert "<" not in text(object())


def test_a_stale_socket_is_removed(sockdir):
    path = os.path.join(sockdir, "stale")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # bound, never listening: nobody answers there
    address.clear_stale_socket(path)
    assert not os.path.exists(path)
    address.clear_stale_socket(path)  # nothing there: nothing to do


def test_a_live_socket_and_other_files_are_left_alone(sockdir):
    live = os.path.join(sockdir, "live")
    s = socket.socket(socket.AF_UNIX)
    s.bind(live)
    s.listen(1)
    try:
        with pytest.raises(AddressError, match="in use"):
            address.clear_stale_socket(live)
        assert os.path.exists(live)
    finally:
        s.close()
    plain = os.path.join(sockdir, "plain")
    with open(plain, "w") as f:
        f.write("keep me")
    with pytest.raises(AddressError, match="not a socket"):
        address.clear_stale_socket(plain)
    assert open(plain).read() == "keep me"
