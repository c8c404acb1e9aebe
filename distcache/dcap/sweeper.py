"""Space management of a tape pool: which disk copies go, and when.

Above the high water mark the sweeper drops disk copies that are already
on tape, least recently used first, until the pool's use is at or below
the low mark (dCache's sweeper does the same).  A copy being read, written,
flushed or staged, and a pinned copy (``stage -stagetime``), is never dropped.

The choice is a pure function of a :class:`Survey` (what the pool holds),
so the pool can ask the same question before it accepts a write ("would it
fit after dropping everything droppable?") and tests can check it without a
disk.  :class:`Sweeper` runs the check on the reactor's clock; the survey and
every drop run on the pool's workers.
"""

from dataclasses import dataclass, field

from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class Copy:
    """One disk copy on the pool, as the sweeper and the flush policy see it."""

    pnfsid: str
    size: int
    accessed: float  # last read or write, on the pool's clock
    written: float  # when this disk copy was made (written or staged)
    on_tape: bool
    busy: bool = False  # being read, written, flushed or staged
    pinned_until: "float | None" = None
    is_file: bool = True  # False: data of no file (an upload mid-commit, or an orphan)

    def pinned(self, now):
        return self.pinned_until is not None and self.pinned_until > now

    def droppable(self, now):
        return self.on_tape and not self.busy and not self.pinned(now)


@dataclass(frozen=True)
class Survey:
    """Every disk copy of the pool at one moment, and the pool's size."""

    now: float
    pool_size: "int | None"
    copies: tuple = field(default_factory=tuple)

    @property
    def used(self):
        return sum(c.size for c in self.copies)

    @property
    def droppable(self):
        return sum(c.size for c in self.copies if c.droppable(self.now))

    @property
    def free(self):
        """Bytes free without dropping anything (None without a size limit)."""
        return None if self.pool_size is None else self.pool_size - self.used

    @property
    def room_after_drops(self):
        """Bytes free once everything droppable is dropped (None without a size limit)."""
        return None if self.pool_size is None else self.pool_size - self.used + self.droppable

    @property
    def unflushed(self):
        """Disk copies with no tape copy yet, oldest first."""
        return sorted((c for c in self.copies if not c.on_tape),
                      key=lambda c: (c.written, c.pnfsid))

    @property
    def pins(self):
        return sorted((c for c in self.copies if c.pinned(self.now)),
                      key=lambda c: (c.pinned_until, c.pnfsid))


def victims(survey, target_used):
    """The droppable copies to drop, least recently used first, to reach target_used.

    Drops no more than needed; if everything droppable is not enough, it is
    all returned and the pool stays above the target.
    """
    excess = survey.used - target_used
    chosen = []
    if excess <= 0:
        return chosen
    candidates = sorted((c for c in survey.copies if c.droppable(survey.now)),
                        key=lambda c: (c.accessed, c.pnfsid))
    for copy in candidates:
        if excess <= 0:
            break
        chosen.append(copy)
        excess -= copy.size
    return chosen


def sweep_target(survey, high, low, need=0):
    """The use to drop down to, or None when no sweep is due.

    A sweep is due above the high mark (then down to the low mark) or when
    ``need`` more bytes must fit (then down to ``pool_size - need``, or the
    low mark if that is lower).
    """
    if survey.pool_size is None:
        return None
    used = survey.used
    if need and used + need > survey.pool_size:
        return min(low, survey.pool_size - need) if used > high else survey.pool_size - need
    if used > high:
        return low
    return None


class Sweeper:
    """Keeps a pool under its high water mark, every ``interval`` seconds.

    ``pool`` provides ``survey()``, ``drop_copies(copies)`` and
    ``expire_pins(now)`` (see pool.py); ``clock`` is the reactor's
    IReactorTime.  A pass that is still running when the next is due is not
    started twice.
    """

    def __init__(self, pool, settings, clock):
        self.pool = pool
        self.settings = settings
        self.clock = clock
        self._loop = None
        self._lock = defer.DeferredLock()
        self._stuck = False  # above the target after the last pass (warned once)

    def start(self):
        if self._loop is None and self.settings.manages_space:
            self._loop = task.LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.settings.sweep_interval, now=False)

    def stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sweep(self, need=0):
        """One pass: a Deferred firing with the copies dropped (a list).

        Passes run one at a time; ``need`` bytes (a write about to start)
        makes the pass free that much even below the high mark.
        """
        def failed(failure):
            log.failure("pool sweep failed", failure)
            return []

        return self._lock.run(self._sweep, need).addErrback(failed)

    def _sweep(self, need):
        def chosen(survey):
            self.pool.expire_pins(survey)
            target = sweep_target(survey, self.settings.high_bytes, self.settings.low_bytes,
                                  need)
            if target is None:
                self._stuck = False
                return []
            drop = victims(survey, target)
            after = survey.used - sum(c.size for c in drop)
            if drop:
                log.info("pool {name} at {used} bytes (high mark {high}): dropping {count} "
                         "disk copies ({bytes} bytes), least recently used first",
                         name=self.pool.name, used=survey.used,
                         high=self.settings.high_bytes, count=len(drop),
                         bytes=survey.used - after)
            stuck = after > target
            if stuck and not self._stuck:
                log.warn("pool {name} stays above {target} bytes: the rest is pinned, in use "
                         "or not yet on tape", name=self.pool.name, target=target)
            self._stuck = stuck
            return self.pool.drop_copies(drop)

        return defer.maybeDeferred(self.pool.survey).addCallback(chosen)
