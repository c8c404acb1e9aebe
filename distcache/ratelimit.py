"""Warnings that repeat, logged so that a flood cannot fill the disk.

A hostile or broken peer can cause the same warning thousands of times a
minute (malformed input, refused certificates, limits reached).  The first
few of each kind in a period are logged in full; the rest are counted and
summarised in one line when the period ends.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.logger import Logger


class RateLimitedLog:
    """One kind of repeated warning: ``burst`` lines in full per ``period`` seconds, then a count."""

    def __init__(self, log: Logger, what: str, clock, burst: int = 5, period: float = 60.0):
        self.log = log
        self.what = what
        self.clock = clock
        self.burst = burst
        self.period = period
        self._logged = 0
        self._suppressed = 0
        self._window = None

    def warn(self, format: str, **kwargs) -> None:
        """Log one occurrence, in full while the burst lasts, else only count it."""
        if self._window is None:
            self._window = self.clock.callLater(self.period, self._close_window)
        if self._logged < self.burst:
            self._logged += 1
            self.log.warn(format, **kwargs)
        else:
            self._suppressed += 1

    @property
    def suppressed(self) -> int:
        """Occurrences counted but not yet reported in this period."""
        return self._suppressed

    def _close_window(self) -> None:
        self._window = None
        if self._suppressed:
            self.log.warn(
                "{count} more {what} in the last {period:.0f} s (not logged one by one)",
                count=self._suppressed, what=self.what, period=self.period)
        self._logged = 0
        self._suppressed = 0

    def stop(self) -> None:
        """Report what is still counted and stop the period timer (at service stop)."""
        if self._window is not None and self._window.active():
            self._window.cancel()
            self._close_window()


class RateLimitedLogs:
    """A ``RateLimitedLog`` per kind of warning, made on first use."""

    def __init__(self, log: Logger, clock, burst: int = 5, period: float = 60.0):
        self.log = log
        self.clock = clock
        self.burst = burst
        self.period = period
        self._kinds: Dict[str, RateLimitedLog] = {}

    def __getitem__(self, what: str) -> RateLimitedLog:
        kind: Optional[RateLimitedLog] = self._kinds.get(what)
        if kind is None:
            kind = self._kinds[what] = RateLimitedLog(
                self.log, what, self.clock, self.burst, self.period)
        return kind

    def stop(self) -> None:
        for kind in self._kinds.values():
            kind.stop()
