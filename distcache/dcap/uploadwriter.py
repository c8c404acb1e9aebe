"""The writes of one upload, batched onto the pool's disk workers in order.

The mover receives a write's DATA blocks on the reactor thread; the file
writes must not run there, and one thread hop per received chunk costs
more than the write.  An `UploadWriter` gathers what arrives into
batches (runs of contiguous bytes, `BATCH_SIZE` at least, or whatever
is waiting when the mover `flush`es at the end of a DATA stream) and
hands one batch at a time to the workers, so the batches land in the
order the client sent them.  The reactor goes on receiving while a
worker writes.

Bytes accepted but not yet written are bounded: past `HIGH_WATER` the
writer asks its owner to stop reading the connection (`on_pressure(True)`)
and below `LOW_WATER` to read again (`on_pressure(False)`).

The first failed write is kept in `error` and reported to `on_error`;
nothing is written after it (the file has a hole and must not commit).

With `on_batch` set, the worker that writes a batch also takes the
adler32 of its bytes (a checksum over bytes the cache still holds costs
little there, and nothing on the reactor); `on_batch(length, sum)` is
called as each batch is handed out, in order, with the sum or a Deferred
of it.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

from twisted.internet import defer

from distcache.dcap.checksum import adler32_of_pieces
from distcache.dcap.workers import INLINE

#: Bytes gathered before a batch goes to a worker without waiting for a flush.
BATCH_SIZE = 1 << 20

#: Bytes accepted and not yet written past which reading should stop...
HIGH_WATER = 8 << 20

#: ...and below which it may go on.
LOW_WATER = 2 << 20

#: Buffers one pwritev takes at most (Linux's IOV_MAX).
IOV_MAX = 1024

_pwritev = getattr(os, "pwritev", None)  # PyPy 3.9 has none

Segment = Tuple[int, List]  # (file offset, contiguous pieces)


def write_segments(fd: int, segments: List[Segment]) -> None:
    """Write every segment's pieces at its offset, resuming after short writes."""
    for offset, pieces in segments:
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        i = 0
        while i < len(views):
            if _pwritev is not None:
                n = _pwritev(fd, views[i:i + IOV_MAX], offset)
            else:
                n = os.pwrite(fd, views[i], offset)
            if n <= 0:
                raise OSError("the file took no bytes at offset %d" % (offset,))
            offset += n
            while n:
                if n >= len(views[i]):
                    n -= len(views[i])
                    i += 1
                else:
                    views[i] = views[i][n:]
                    n = 0


def write_and_sum(fd: int, segments: List[Segment]) -> int:
    """write_segments, then the adler32 of every piece written, in order."""
    write_segments(fd, segments)
    value = adler32_of_pieces(p for _, pieces in segments for p in pieces)
    return value


class UploadWriter:
    """Write one file's received bytes off the reactor, batch after batch.

    `fd` is the upload's open descriptor (written with pwrite, so the file
    object's position does not matter); `workers` runs the writes
    (`ThreadWorkers` or `INLINE`).  Pieces given to `write` must not change
    afterwards (bytes, or views of bytes).
    """

    def __init__(self, fd: int, workers=INLINE,
                 on_pressure: Optional[Callable[[bool], None]] = None,
                 on_error: Optional[Callable[[OSError], None]] = None,
                 on_batch: Optional[Callable[[int, object], None]] = None,
                 batch_size: int = BATCH_SIZE, high_water: int = HIGH_WATER,
                 low_water: int = LOW_WATER):
        self.fd = fd
        self.workers = workers
        self.on_pressure = on_pressure
        self.on_error = on_error
        self.on_batch = on_batch
        self.batch_size = batch_size
        self.high_water = high_water
        self.low_water = low_water
        self.error: Optional[OSError] = None
        #: True while reading should stop (on_pressure(True) was the last call).
        self.pressing = False
        self._segments: List[Segment] = []  # gathered, not yet handed to a worker
        self._end = -1                      # file offset just past the last segment
        self._pending = 0                   # bytes in _segments
        self._running = 0                   # bytes of the batch a worker writes now
        self._flush_wanted = False
        self._idle_waiters: List[defer.Deferred] = []
        self._sum: Optional[defer.Deferred] = None  # the running batch's sum, for on_batch

    @property
    def queued(self) -> int:
        """Bytes accepted and not yet written (or failed)."""
        return self._pending + self._running

    @property
    def idle(self) -> bool:
        """True when nothing waits and no worker writes."""
        return not self._running and not self._segments

    def write(self, offset: int, data) -> None:
        """Accept data for offset; it reaches the file in the order accepted."""
        if self.error is not None or not len(data):
            return
        if offset == self._end and self._segments:
            self._segments[-1][1].append(data)
        else:
            self._segments.append((offset, [data]))
        self._end = offset + len(data)
        self._pending += len(data)
        if self._pending >= self.batch_size:
            self._start()
        if not self.pressing and self.queued > self.high_water:
            self._press(True)

    def flush(self) -> None:
        """Send everything accepted so far to be written, without waiting for a full batch."""
        if self._segments:
            self._flush_wanted = True
            self._start()

    def when_idle(self):
        """None when every accepted byte is written (or failed), else a Deferred firing then."""
        self.flush()
        if self.idle:
            return None
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def discard(self) -> None:
        """Drop what waits for a worker (the upload is abandoned); a running batch finishes."""
        self._segments = []
        self._pending = 0
        self._flush_wanted = False
        self._settle()

    # -- the batches -------------------------------------------------------

    def _start(self) -> None:
        """Hand what is gathered to a worker, unless one is writing for this file."""
        if self._running or not self._segments:
            return
        if self._pending < self.batch_size and not self._flush_wanted:
            return
        segments, self._segments = self._segments, []
        self._running, self._pending = self._pending, 0
        self._flush_wanted = False
        on_batch = self.on_batch
        try:
            result = self.workers.disk(write_segments if on_batch is None else write_and_sum,
                                       self.fd, segments)
        except OSError as e:
            if on_batch is not None:
                on_batch(self._running, None)
            self._failed(e)
            return
        if isinstance(result, defer.Deferred):
            if on_batch is not None:
                self._sum = defer.Deferred()
                on_batch(self._running, self._sum)
            result.addCallbacks(self._written, self._write_failed)
        else:
            if on_batch is not None:
                on_batch(self._running, result)
            self._written(result)

    def _deliver_sum(self, value) -> None:
        summed, self._sum = self._sum, None
        if summed is not None:
            summed.callback(value)

    def _written(self, value) -> None:
        self._deliver_sum(value)
        self._running = 0
        if self.error is None and self._segments:
            self._start()
        self._settle()

    def _write_failed(self, failure) -> None:
        e = failure.value
        if not isinstance(e, OSError):
            e = OSError(str(e))
        self._failed(e)

    def _failed(self, e: OSError) -> None:
        self._deliver_sum(None)  # no sum: the upload cannot commit
        self._running = 0
        self._segments = []
        self._pending = 0
        if self.error is None:
            self.error = e
            if self.on_error is not None:
                self.on_error(e)
        self._settle()

    def _settle(self) -> None:
        """Release reading and waiters once the queue allows it."""
        if self.pressing and self.queued <= self.low_water:
            self._press(False)
        if self.idle and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def _press(self, on: bool) -> None:
        self.pressing = on
        if self.on_pressure is not None:
            self.on_pressure(on)
