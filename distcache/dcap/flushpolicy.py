"""When new files go to tape by themselves.

A file written to a pool with tertiary storage is flushed once it is
``flush_after`` seconds old, as soon as ``flush_batch`` files wait, or at
once while the pool is above its high water mark (so that the sweeper
finds something to drop) -- dCache's flush queues do the same with their
``expire``, ``pending`` and ``total`` limits.

:func:`due` is the pure decision on a Survey; :class:`FlushPolicy` runs it
on the reactor's clock and hands the due files to the pool's flush, which
shares a running flush of the same file and does its work off the reactor.
"""

from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()

#: The longest a file whose flushes keep failing waits for its next try (seconds).
MAX_RETRY_DELAY = 3600.0


def due(survey, settings):
    """The unflushed copies of survey to flush now, oldest first, and why (a word)."""
    waiting = [c for c in survey.unflushed if c.is_file]
    if not waiting:
        return [], None
    high = settings.high_bytes
    if high is not None and survey.used > high:
        return waiting, "above the high mark"
    if settings.flush_batch is not None and len(waiting) >= settings.flush_batch:
        return waiting, "%d files waiting" % len(waiting)
    if settings.flush_after is not None:
        old = [c for c in waiting if survey.now - c.written >= settings.flush_after]
        if old:
            return old, "older than %gs" % settings.flush_after
    return [], None


class FlushPolicy:
    """Flushes due files every ``sweep_interval`` seconds on the given clock.

    ``pool`` provides ``survey()``, ``flush_pnfsid(pnfsid)`` and ``hsm``;
    without tertiary storage or without a rule the policy does nothing.
    """

    def __init__(self, pool, settings, clock):
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self._loop = None
        self._lock = defer.DeferredLock()
        # pnfsid -> (failures in a row, clock time of the next try): a failing
        # tape is tried again later and later, not on every pass
        self._backoff = {}

    @property
    def active(self):
        return self.pool.hsm is not None and self.settings.flushes

    def start(self):
        if self._loop is None and self.active:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.clock
            self._loop.start(self.settings.sweep_interval, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self):
        """One pass: flush what is due; a Deferred firing with the flushed Entries."""
        def failed(failure):
            log.failure("flush policy pass failed", failure)
            return []
        return self._lock.run(self._check).addErrback(failed)

    def _check(self):
        def start(survey):
            files, reason = due(survey, self.settings)
            files = [c for c in files if c.pnfsid not in self.pool.flushing
                     and self._backoff.get(c.pnfsid, (0, 0))[1] <= survey.now]
            if not files:
                return []
            log.info("pool {name}: flushing {count} files to tape ({reason})",
                     name=self.pool.name, count=len(files), reason=reason)
            return defer.gatherResults([self._one(c) for c in files]).addCallback(
                lambda results: [r for r in results if r is not None])

        return defer.maybeDeferred(self.pool.survey).addCallback(start)

    def _one(self, copy):
        d = defer.maybeDeferred(self.pool.flush_pnfsid, copy.pnfsid)

        def done(entry):
            self._backoff.pop(copy.pnfsid, None)
            return entry

        def failed(_):
            # the pool has logged why; the next try waits twice as long as the last
            count = self._backoff.get(copy.pnfsid, (0, 0))[0] + 1
            delay = min(self.settings.sweep_interval * 2 ** count, MAX_RETRY_DELAY)
            self._backoff[copy.pnfsid] = (count, self.clock.seconds() + delay)
            return None

        return d.addCallbacks(done, failed)
