"""The shared deadline helpers: they return what they waited for and give up on time."""

import itertools
import time

import pytest
from twisted.internet import task

from polling import poll_until, wait_until


def test_wait_until_returns_the_first_truthy_value():
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "ready", interval=0.001) == "ready"


def test_wait_until_gives_up_at_its_deadline_with_the_last_value():
    started = time.monotonic()
    assert wait_until(lambda: [], timeout=0.2, interval=0.05) == []
    assert 0.2 <= time.monotonic() - started < 2


def test_poll_until_fires_once_the_condition_holds_on_the_reactor_clock():
    clock = task.Clock()
    state = {"ready": False}
    d = poll_until(lambda: state["ready"] and "yes", timeout=5, interval=0.5, reactor=clock)
    clock.advance(1)
    assert not d.called
    state["ready"] = True
    clock.advance(0.5)
    assert d.result == "yes"


def test_poll_until_fails_with_timeout_error_at_its_deadline():
    clock = task.Clock()
    d = poll_until(lambda: False, timeout=2, interval=0.5, reactor=clock)
    clock.pump([0.5] * 4)
    failures = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(TimeoutError)
    with pytest.raises(TimeoutError):
        failures[0].raiseException()
