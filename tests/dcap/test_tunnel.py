"""The login line of dcap's ssl tunnel and the gate that checks it, on a fake clock."""

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer, task

from distcache.dcap.auth import Account
from distcache.dcap.control import ProtocolError
from distcache.dcap.tunnel import (
    AUTH_PREFIX, CHECKING, OPEN, REFUSED, Credentials, LoginGate, parse_auth_line,
)

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0'
ALICE = Account("alice", 1000, 100)


@pytest.mark.parametrize("line, expected", [
    (b"Auth Protocol V#1.0 auth=alice:s3cret", Credentials("alice", "s3cret")),
    (b"Auth Protocol V#1.0 auth=alice:a:b:c", Credentials("alice", "a:b:c")),
    (b"Auth Protocol V#1.0 auth=:", Credentials("", "")),
    (b"Auth Protocol V#1.0 auth=j\xc3\xb6rg:pw", Credentials("j\u00f6rg", "pw")),
    (HELLO, None),
    (b"Auth Protocol V#2.0 auth=alice:pw", None),
])
def test_login_lines(line, expected):
    assert parse_auth_line(line) == expected


@pytest.mark.parametrize("line", [b"Auth Protocol V#1.0 auth=alice", b"Auth Protocol V#1.0 auth=\xff:pw"])
def test_broken_login_lines(line):
    with pytest.raises(ProtocolError):
        parse_auth_line(line)


def test_password_stays_out_of_repr():
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))


@given(st.binary(max_size=100))
def test_any_bytes_after_the_prefix_parse_or_raise_protocol_error(tail):
    try:
        creds = parse_auth_line(AUTH_PREFIX + tail)
    except ProtocolError:
        return
    assert (creds.user + ":" + creds.password).encode("utf-8") == tail


class Harness:
    """A gate whose outputs are recorded; checks answer when the test says."""

    def __init__(self, secure=True, answer=None):
        self.clock = task.Clock()
        self.delivered, self.logins, self.refusals, self.closed = [], [], [], 0
        self.checks = []
        self.answer = answer
        self.gate = LoginGate(secure, self.check, self.delivered.append, self.logins.append,
                              self.refusals.append, self.close, self.clock)

    def check(self, user, password):
        d = defer.Deferred()
        self.checks.append((user, password, d))
        return d

    def close(self):
        self.closed += 1


def test_a_plain_first_line_makes_the_connection_anonymous():
    h = Harness()
    h.gate.line(HELLO)
    h.gate.line(b"1 0 client stat /x")
    assert h.delivered == [HELLO, b"1 0 client stat /x"]
    assert h.gate.state == OPEN and not h.logins and not h.checks


def test_a_good_login_holds_the_hello_until_the_check_is_in():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    h.gate.line(HELLO)
    assert h.gate.state == CHECKING and h.delivered == []
    assert [(u, p) for u, p, _ in h.checks] == [("alice", "s3cret")]
    h.checks[0][2].callback(ALICE)
    assert h.logins == [ALICE] and h.delivered == [HELLO] and h.gate.state == OPEN
    h.gate.line(b"1 0 client stat /x")
    assert h.delivered[-1] == b"1 0 client stat /x"


def test_a_wrong_password_closes_after_the_delay_and_drops_what_waits():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:nope")
    h.gate.line(HELLO)
    h.checks[0][2].callback(None)
    assert h.gate.state == REFUSED and h.refusals == ["user alice: wrong user name or password"]
    assert h.closed == 0
    h.gate.line(b"1 0 client stat /x")
    h.clock.advance(h.gate.delay)
    assert h.closed == 1 and h.delivered == [] and not h.logins


def test_a_login_without_tls_is_refused_at_once():
    h = Harness(secure=False)
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    assert h.closed == 1 and not h.checks and "TLS" in h.refusals[0]


def test_a_broken_login_line_is_refused_at_once():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice")
    assert h.closed == 1 and h.gate.state == REFUSED


@pytest.mark.parametrize("first_answer", [None, "open"])
def test_a_login_line_later_is_refused(first_answer):
    h = Harness()
    if first_answer == "open":
        h.gate.line(HELLO)
    else:
        h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    h.gate.line(b"Auth Protocol V#1.0 auth=bob:pw")
    assert h.closed == 1 and "after the first line" in h.refusals[0]
    assert len(h.checks) <= 1


def test_too_many_lines_while_checking():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    for i in range(h.gate.max_waiting):
        h.gate.line(b"%d 0 client ping" % i)
    assert h.closed == 0
    h.gate.line(b"99 0 client ping")
    assert h.closed == 1 and h.gate.state == REFUSED
    h.checks[0][2].callback(ALICE)  # too late: nothing happens
    assert not h.logins and not h.delivered


def test_a_failing_check_refuses_with_its_reason():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    h.checks[0][2].errback(LookupError("this door has no password file (--passwd)"))
    assert "no password file" in h.refusals[0]
    h.clock.advance(h.gate.delay)
    assert h.closed == 1


def test_a_check_that_raises_at_once_refuses():
    h = Harness()
    h.gate._check = lambda user, password: (_ for _ in ()).throw(LookupError("no file"))
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    assert "no file" in h.refusals[0]


def test_losing_the_connection_cancels_the_check_and_the_pending_close():
    h = Harness()
    h.gate.line(b"Auth Protocol V#1.0 auth=alice:s3cret")
    d = h.checks[0][2]
    h.gate.lost()
    assert d.called  # cancelled
    assert h.gate.state == REFUSED and not h.refusals

    h2 = Harness()
    h2.gate.line(b"Auth Protocol V#1.0 auth=alice:x")
    h2.checks[0][2].callback(None)
    h2.gate.lost()
    h2.clock.advance(10)
    assert h2.closed == 0 and not h2.clock.getDelayedCalls()
