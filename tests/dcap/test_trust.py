"""Whom the door believes: network lists, peers in them, and the subject of a request."""

import pytest
from hypothesis import given, strategies as st

from distcache.dcap.namespace import NOBODY_UID, Access, Subject
from distcache.dcap.trust import NetworkListError, in_networks, parse_networks, subject_for


def test_networks_parse_and_normalise():
    assert parse_networks("127.0.0.1/8, 10.1.2.3,::1/128") == ("127.0.0.0/8", "10.1.2.3/32",
                                                              "::1/128")


@pytest.mark.parametrize("text", ["", " , ", "127.0.0.1/33", "example.org", "10.0.0.0/8;1.2.3.4"])
def test_bad_network_lists_are_refused(text):
    with pytest.raises(NetworkListError):
        parse_networks(text)


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.255.0.9", True), ("128.0.0.1", False),
    ("::ffff:127.0.0.1", True),  # an IPv4 peer on a dual-stack socket
    ("::1", False), ("", False), (None, False), ("/run/door.sock", False),
])
def test_peers_in_networks(host, expected):
    assert in_networks(host, ("127.0.0.0/8",)) is expected


def test_no_network_means_nobody_is_in_it():
    assert not in_networks("127.0.0.1", ())


def test_untrusted_claims_are_the_anonymous_user():
    s = subject_for(Access.FULL, False, 0, 0)
    assert s.anonymous and not s.superuser
    assert (s.uid, s.gid) == (NOBODY_UID, NOBODY_UID)
    assert not s.owns(NOBODY_UID) and not s.in_group(NOBODY_UID)
    assert s.access is Access.FULL


def test_trusted_claims_are_believed():
    assert subject_for(Access.READONLY, True, 100, 200) == Subject(100, 200, Access.READONLY)


def test_a_verified_identity_wins_over_claims_and_trust():
    account = Subject(7, 8, Access.FULL, user="alice")
    assert subject_for(Access.READONLY, False, 0, 0, verified=account) is account
    assert subject_for(Access.READONLY, True, 0, 0, verified=account) is account


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_clearly(text):
    try:
        networks = parse_networks(text)
    except NetworkListError:
        return
    assert networks and all(in_networks(n.split("/")[0], networks) for n in networks)
