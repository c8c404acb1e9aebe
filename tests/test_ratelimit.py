"""Repeated warnings: the first few in full, then one count per period."""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from distcache.ratelimit import RateLimitedLog, RateLimitedLogs


def capture():
    events = []
    return Logger(namespace="test", observer=events.append), events


def messages(events):
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events]


def test_a_burst_is_logged_in_full_then_counted():
    log, events = capture()
    clock = Clock()
    limited = RateLimitedLog(log, "malformed connections", clock, burst=3, period=60)
    for n in range(10):
        limited.warn("bad input from {peer}", peer=f"10.0.0.{n}")
    assert messages(events) == [f"bad input from 10.0.0.{n}" for n in range(3)]
    assert limited.suppressed == 7
    clock.advance(60)
    assert messages(events)[-1] == "7 more malformed connections in the last 60 s (not logged one by one)"
    assert all(e["log_level"] == LogLevel.warn for e in events)


def test_a_new_period_starts_a_new_burst_and_a_quiet_one_says_nothing():
    log, events = capture()
    clock = Clock()
    limited = RateLimitedLog(log, "refusals", clock, burst=1, period=10)
    limited.warn("one")
    clock.advance(10)
    assert messages(events) == ["one"]          # nothing suppressed: no summary line
    limited.warn("two")
    limited.warn("three")
    clock.advance(10)
    assert messages(events) == ["one", "two", "1 more refusals in the last 10 s (not logged one by one)"]
    clock.advance(100)
    assert len(events) == 3
    assert not clock.getDelayedCalls()


def test_stop_reports_what_is_counted_and_leaves_no_timer():
    log, events = capture()
    clock = Clock()
    kinds = RateLimitedLogs(log, clock, burst=1, period=60)
    kinds["limits"].warn("limit reached")
    kinds["limits"].warn("limit reached")
    kinds["garbage"].warn("garbage")
    kinds.stop()
    assert "1 more limits in the last 60 s (not logged one by one)" in messages(events)
    assert not clock.getDelayedCalls()
