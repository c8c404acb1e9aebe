"""
Open deadlines and the door's keep-alive pass that enforces them.

An open may have to wait (a file being staged from tape); openTimeout bounds
that wait.  As in dCache the deadline is only looked at by the door's
keep-alive pass, which runs every ``keepAlive`` seconds, so a deadline is
noticed up to one interval late, and without a keep-alive it is never
enforced.  At the pass after the deadline:

* an open still waiting is answered ``failed 112 "User timeout canceled
  session"``;
* a read already flowing is interrupted (its data connection closed): the
  real dccp cannot tell this from a network failure, so it pings the door,
  reopens and seeks back, and the copy completes;
* a write already flowing (any open for ``w`` or ``rw``) is left alone.  dCache cuts it and leaves dccp
  stuck; a client that is sending data is not waiting for anything, so the
  deadline no longer applies to it.

Time comes from an injected IReactorTime, so all of this runs on
``task.Clock`` in tests.
"""

import enum
from collections import Counter

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

TIMEOUT_MESSAGE = "User timeout canceled session"


class Phase(enum.Enum):
    WAITING = "waiting"
    READING = "reading"
    WRITING = "writing"
    DONE = "done"


class OpenWatch:
    """
    One open under a deadline; the door moves it through its phases.

    ``on_expired_waiting()`` and ``on_expired_reading()`` are called (at most
    once, by the keep-alive pass) when the deadline passes in that phase.
    """

    def __init__(self, owner, session, deadline, on_expired_waiting,
                 on_expired_reading):
        self._owner = owner
        self.session = session
        self.deadline = deadline
        self.phase = Phase.WAITING
        self._on_expired_waiting = on_expired_waiting
        self._on_expired_reading = on_expired_reading

    def transfer_started(self, writing):
        """
        The mover has its data connection: the open is no longer waiting.

        ``writing`` is true for opens that may write (``w`` and ``rw``):
        their transfers are never cut.
        """
        if self.phase is Phase.WAITING:
            self.phase = Phase.WRITING if writing else Phase.READING

    def finished(self):
        """The open is over (answered, failed or its transfer ended)."""
        self.phase = Phase.DONE
        self._owner._forget(self)

    def _expire(self):
        phase = self.phase
        self.finished()
        self._owner.expired[phase.value] += 1
        if phase is Phase.WAITING:
            log.info(
                "transfer {session}: open deadline passed while waiting",
                session=self.session,
            )
            self._on_expired_waiting()
        elif phase is Phase.READING:
            log.info(
                "transfer {session}: open deadline passed during a read; "
                "interrupting it (the client resumes)",
                session=self.session,
            )
            self._on_expired_reading()
        elif phase is Phase.WRITING:
            log.info(
                "transfer {session}: open deadline passed during a write; "
                "the write continues",
                session=self.session,
            )


class OpenTimeouts:
    """The door's open deadlines and its keep-alive pass over them."""

    def __init__(self, clock, keep_alive):
        self.clock = clock
        self.keep_alive = keep_alive or None
        self._watches = set()
        self._loop = None
        #: phase name -> deadlines that passed in it (for the metrics)
        self.expired = Counter()

    def watch(self, session, timeout, on_expired_waiting, on_expired_reading):
        """
        Put an open under a deadline of ``timeout`` seconds from now.

        Returns an OpenWatch, or None when there is nothing to enforce (no
        timeout, or no keep-alive pass to enforce it).
        """
        if timeout is None or self.keep_alive is None:
            return None
        w = OpenWatch(self, session, self.clock.seconds() + timeout,
                      on_expired_waiting, on_expired_reading)
        self._watches.add(w)
        return w

    def _forget(self, w):
        self._watches.discard(w)

    def __len__(self):
        return len(self._watches)

    def sweep(self):
        """One keep-alive pass: act on every deadline that has passed."""
        now = self.clock.seconds()
        expired = [w for w in self._watches if w.deadline <= now]
        for w in sorted(expired, key=lambda w: w.deadline):
            try:
                w._expire()
            except Exception:
                log.failure("transfer {session}: open deadline handling failed",
                            session=w.session)

    def start(self):
        """Start the keep-alive pass (nothing to do without a keep-alive)."""
        if self.keep_alive is None or self._loop is not None:
            return
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(self.keep_alive, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
