"""The session machine, walked: every input in every state, against the table below.

The table is the specification of `distcache.dcap.session.Session`; the
walk fails on an input a state does not handle (automat's NoTransition) and
on any transition that lands elsewhere than the table says.  Beside the
states it checks what ending a session must always do: one answer at most,
the session forgotten exactly once, its watch finished, its waits
cancelled, its listener closed and its transfer ended.
"""

from io import BytesIO

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from distcache.dcap.mover import Transfer, TransferError
from distcache.dcap.opentimeout import OpenTimeouts
from distcache.dcap.session import Session

STATES = ["resolving", "staging", "awaiting_mover", "transferring", "done"]
INPUTS = ["answered", "stage", "ready", "listening", "mover_connected", "mover_finished",
          "failed", "deadline_waiting", "deadline_reading", "control_lost"]

R, S, A, T, D = STATES
#: state -> the state each input (in INPUTS order) leads to.
TABLE = {
    #                answered stage ready listening connected finished failed dl_wait dl_read lost
    "resolving":      [D,     S,    A,    R,        R,        R,       D,     D,      D,      D],
    "staging":        [S,     S,    A,    S,        S,        S,       D,     D,      D,      D],
    "awaiting_mover": [A,     A,    A,    A,        T,        D,       D,     D,      D,      D],
    "transferring":   [T,     T,    T,    T,        T,        D,       D,     D,      D,      D],
    "done":           [D,     D,    D,    D,        D,        D,       D,     D,      D,      D],
}


class Door:
    """The four things a session asks of its control connection, recorded."""

    def __init__(self):
        self.lines = []
        self.ended = []
        self.starts = []
        self.outcomes = []

    def send(self, line):
        self.lines.append(line.decode("ascii").rstrip("\n"))

    def session_ended(self, session):
        self.ended.append(session)

    def transfer_finished(self, session, result, error=None):
        self.outcomes.append((result, None if error is None else error.rc))

    def start_mover(self, session, passive):
        d = defer.Deferred()
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        self.starts.append(d)
        return d


class Port:
    """A mover's listening port, as far as a session sees it."""

    listening = True

    def stopListening(self):
        self.listening = False


class Walk:
    def __init__(self):
        self.reactor = MemoryReactorClock()
        self.door = Door()
        self.timeouts = OpenTimeouts(self.reactor, 1)
        self.session = Session(self.door, 3, 0, "open", "/f", tid=7)
        self.session.watch = self.timeouts.watch(7, 10, self.session.deadline_waiting,
                                                 self.session.deadline_reading)
        self.waits = []
        self.ports = []
        self.transfers = []

    def transfer(self):
        t = Transfer(3, source=BytesIO(b"data"), size=4, label="r /f")
        self.transfers.append(t)
        return t

    def port(self):
        p = Port()
        self.ports.append(p)
        return p

    def fire(self, name):
        s = self.session
        if name == "stage":
            wait = defer.Deferred()
            wait.addErrback(lambda f: f.trap(defer.CancelledError))
            self.waits.append(wait)
            s.stage(wait)
        elif name == "ready":
            s.ready(self.transfer(), True)
        elif name == "listening":
            for d in self.door.starts:
                if not d.called:
                    d.callback(None)  # listening is what the start step answers
            s.listening(self.port(), b"3 0 client connect 127.0.0.1 40000 challenge\n")
        elif name == "mover_finished":
            if s.transfer is not None:
                s.transfer.end(None)  # the transfer reports its own end
            else:
                s.mover_finished(None)
        elif name == "failed":
            s.failed(TransferError(5, "it broke"))
        elif name == "control_lost":
            s.control_lost("client gone")
        else:
            getattr(s, name)()


#: inputs that bring a fresh session into each state
PATHS = {
    "resolving": [],
    "staging": ["stage"],
    "awaiting_mover": ["ready"],
    "transferring": ["ready", "listening", "mover_connected"],
    "done": ["failed"],
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("index, name", list(enumerate(INPUTS)))
def test_every_input_in_every_state(state, index, name):
    walk = Walk()
    for step in PATHS[state]:
        walk.fire(step)
    assert walk.session.state() == state
    walk.fire(name)
    assert walk.session.state() == TABLE[state][index]
    if walk.session.state() == "done":
        # a store's late answer ends a request that never was a transfer
        check_ended(walk, outcomes=0 if (state, name) == ("resolving", "answered") else 1)
    else:
        assert walk.door.ended == []
        assert len(walk.timeouts) == 1


def check_ended(walk, outcomes=1):
    s = walk.session
    assert walk.door.ended == [s]                     # forgotten exactly once
    assert len(walk.door.outcomes) == outcomes        # its outcome told exactly once
    assert len(walk.door.lines) <= 1 + sum(1 for p in walk.ports)  # one answer (and a connect)
    assert len(walk.timeouts) == 0                    # the openTimeout watch is finished
    assert all(w.called for w in walk.waits)          # stage waits cancelled
    assert all(d.called for d in walk.door.starts)    # a connect-back attempt stopped
    assert s.pending is None
    assert all(not p.listening for p in walk.ports)   # mover ports closed
    assert all(t.ended for t in walk.transfers)       # transfers ended (files closed)


@pytest.mark.parametrize("state", STATES)
def test_a_session_waits_for_its_client_until_the_data_connection_is_up(state):
    walk = Walk()
    for step in PATHS[state]:
        walk.fire(step)
    assert walk.session.state() == state
    assert walk.session.waiting() is (state in ("resolving", "staging", "awaiting_mover"))


@pytest.mark.parametrize("mode", ["r", "w", "rw"])
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", ["failed", "deadline_waiting", "mover_finished_error",
                                  "mover_finished_ok"])
def test_a_failed_write_is_a_write_answered_with_an_error_after_its_transfer_began(
        mode, state, name):
    from distcache.dcap.control import parse_request
    walk = Walk()
    walk.session.request = parse_request(b'3 0 client open "dcap://h/f" %s h 1\n'
                                         % mode.encode())
    for step in PATHS[state]:
        walk.fire(step)
    if name == "mover_finished_error":
        walk.session.mover_finished(TransferError(204, "No space left on device"))
    elif name == "mover_finished_ok":
        walk.session.mover_finished(None)
    else:
        walk.fire(name)
    began = state in ("awaiting_mover", "transferring")
    answered_error = name != "mover_finished_ok" and (began or name in ("failed",
                                                                          "deadline_waiting"))
    expected = mode != "r" and began and answered_error
    assert walk.session.failed_write() is expected


def test_the_table_covers_every_state_and_input():
    assert set(TABLE) == set(STATES)
    assert all(len(row) == len(INPUTS) for row in TABLE.values())


@pytest.mark.parametrize("name", ["failed", "deadline_waiting", "control_lost"])
def test_ending_while_awaiting_a_connect_back_cancels_it(name):
    walk = Walk()
    walk.fire("ready")
    attempt = walk.door.starts[0]
    attempt.addErrback(lambda f: f.trap(defer.CancelledError))
    walk.fire(name)
    assert attempt.called


def test_replies_by_way_of_ending():
    cases = {
        ("ready", "mover_finished"): ["3 0 client ok"],
        ("failed",): ['3 0 client failed 5 "it broke"'],
        ("stage", "deadline_waiting"): ['3 0 client failed 112 "User timeout canceled session"'],
        ("ready", "listening", "mover_connected", "deadline_reading"): [],
        ("ready", "control_lost"): [],
    }
    for steps, expected in cases.items():
        walk = Walk()
        for step in steps:
            walk.fire(step)
        lines = [line for line in walk.door.lines if " connect " not in line]
        assert lines == expected, steps


def test_opendir_sessions_do_not_answer_their_outcome():
    walk = Walk()
    walk.session.answers = False
    walk.fire("ready")
    walk.fire("mover_finished")
    assert walk.door.lines == []
    assert walk.session.state() == "done"


def test_outcomes_by_way_of_ending():
    cases = {
        ("ready", "mover_finished"): ("ok", None),
        ("ready", "listening", "mover_connected", "failed"): ("failed", 5),
        ("stage", "deadline_waiting"): ("timeout", 112),
        ("ready", "listening", "mover_connected", "deadline_reading"): ("interrupted", None),
        ("ready", "control_lost"): ("client_gone", None),
    }
    for steps, expected in cases.items():
        walk = Walk()
        for step in steps:
            walk.fire(step)
        assert walk.door.outcomes == [expected], steps


def test_a_door_stopping_is_its_own_outcome():
    walk = Walk()
    walk.fire("ready")
    walk.session.control_lost("door stopping")
    assert walk.door.outcomes == [("door_stopping", None)]


def test_requests_without_a_transfer_id_tell_no_outcome():
    door = Door()
    session = Session(door, 4, 0, "stat", "/f")
    session.failed(TransferError(5, "it broke"))
    assert session.state() == "done" and door.outcomes == []


def test_status_text_follows_the_state_and_the_time_in_it():
    clock = MemoryReactorClock()
    door = Door()
    session = Session(door, 4, 0, "open", "/f", tid=1, clock=clock)
    clock.advance(2)
    assert session.status_text(7, "99") == "[4][7][99] resolving(2)"
    wait = defer.Deferred()
    wait.addErrback(lambda f: None)
    session.stage(wait)
    assert session.status_text(7, "99") == "[4][7][99] staging(0)"
    clock.advance(5)
    t = Transfer(4, source=BytesIO(b"x"), size=1)
    t.outcome.addErrback(lambda f: None)
    session.ready(t, True)
    assert session.status_text(7, "99") == "[4][7][99] awaiting_mover(0)"
    clock.advance(1.5)
    assert session.status_text(7, "99") == "[4][7][99] awaiting_mover(1)"
    session.mover_connected()
    assert session.status_text(7, "99") == "[4][7][99] transferring(0)"
    session.control_lost("client gone")
