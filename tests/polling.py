"""Waiting for a condition with a deadline, never a sleep that decides a verdict.

``wait_until`` blocks (tests that drive other processes); ``poll_until`` runs
on the reactor (tests inside it).  Both return the predicate's last truthy
value, so a caller can keep what it waited for; on timeout ``wait_until``
returns the final falsy value (the caller asserts with its own message) and
``poll_until`` fails with ``TimeoutError``.
"""

import time

from twisted.internet import defer, task


def wait_until(predicate, timeout=10.0, interval=0.05):
    """predicate() until it is truthy or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@defer.inlineCallbacks
def poll_until(predicate, timeout=10.0, interval=0.01, reactor=None):
    """A Deferred firing with predicate()'s first truthy value, checked on the reactor."""
    if reactor is None:
        from twisted.internet import reactor
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() >= deadline:
            raise TimeoutError("condition not reached within %gs" % (timeout,))
        yield task.deferLater(reactor, interval, lambda: None)
