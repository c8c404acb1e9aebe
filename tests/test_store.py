"""The session store's semantics on a fake clock: expiry, limits, soonest-expiry eviction."""


import sys

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from distcache import wire
from distcache.store import ISessionStore, SessionStore


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1000)
    return c


def test_provides_interface(clock):
    assert verifyObject(ISessionStore, SessionStore(clock))


def test_add_get_have_remove(clock):
    s = SessionStore(clock)
    assert s.add(b"a", b"data", 1000) == wire.OK
    assert s.add(b"a", b"other", 1000) == wire.ERR_MATCHING_SESSION
    assert s.get(b"a") == b"data" and s.have(b"a")
    assert s.remove(b"a") is True
    assert s.remove(b"a") is False
    assert s.get(b"a") is None and not s.have(b"a")


def test_expiry_by_the_clock(clock):
    s = SessionStore(clock)
    s.add(b"a", b"d", 1500)
    clock.advance(1.499)
    assert s.get(b"a") == b"d"
    clock.advance(0.001)
    assert s.get(b"a") is None
    assert len(s) == 0


def test_expired_id_may_be_added_again(clock):
    s = SessionStore(clock)
    s.add(b"a", b"old", 10)
    clock.advance(1)
    assert s.add(b"a", b"new", 1000) == wire.OK
    assert s.get(b"a") == b"new"


def test_remove_of_an_expired_session_is_a_miss(clock):
    s = SessionStore(clock)
    s.add(b"a", b"d", 10)
    clock.advance(1)
    assert s.remove(b"a") is False


def test_full_cache_evicts_the_soonest_expiring(clock):
    s = SessionStore(clock, max_sessions=3)
    s.add(b"long", b"1", 9000)
    s.add(b"soon", b"2", 1000)
    s.add(b"mid", b"3", 5000)
    assert s.add(b"new", b"4", 7000) == wire.OK
    assert len(s) == 3
    assert not s.have(b"soon")
    assert all(s.have(i) for i in (b"long", b"mid", b"new"))
    assert s.evictions == 1


def test_full_cache_prefers_dropping_expired_sessions(clock):
    s = SessionStore(clock, max_sessions=3)
    s.add(b"x", b"1", 100)
    s.add(b"y", b"2", 200)
    s.add(b"keep", b"3", 9000)
    clock.advance(0.5)
    s.add(b"new", b"4", 50)
    assert s.evictions == 0 and s.expirations == 2
    assert s.have(b"keep") and s.have(b"new")


def test_any_positive_limit(clock):
    s = SessionStore(clock, max_sessions=100000)
    for i in range(100000):
        s.add(b"%d" % i, b"d", 60000)
    assert len(s) == 100000
    s.add(b"one more", b"d", 60000)
    assert len(s) == 100000
    with pytest.raises(ValueError):
        SessionStore(clock, max_sessions=0)


def test_memory_bounded_under_churn(clock):
    """REMOVE and re-ADD leave stale heap entries; they are compacted away."""
    s = SessionStore(clock, max_sessions=100)
    for i in range(20000):
        sid = b"%d" % (i % 50)
        s.remove(sid)
        s.add(sid, b"d", 1000 + i)
        clock.advance(0.0001)
    assert len(s) == 50
    assert len(s._heap) <= 2 * len(s) + 64


def test_purge_drops_expired(clock):
    s = SessionStore(clock)
    for i in range(10):
        s.add(b"%d" % i, b"d", 100 * (i + 1))
    clock.advance(0.55)
    assert s.purge() == 5
    assert len(s) == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("agrh"), st.integers(0, 12), st.integers(0, 3000),
                          st.integers(0, 500)), max_size=120),
       st.integers(1, 8))
def test_against_a_model(ops, limit):
    """Random operations agree with a brute-force model of the cache."""
    clock = Clock()
    s = SessionStore(clock, max_sessions=limit)
    model = {}  # id -> (expiry_ms, data)
    for kind, n, timeout, step in ops:
        clock.advance(step / 1000)
        now = int(clock.seconds() * 1000)
        for k in [k for k, (e, _) in model.items() if e <= now]:
            del model[k]
        sid = b"id%d" % n
        if kind == "a":
            if sid in model:
                assert s.add(sid, b"x", timeout) == wire.ERR_MATCHING_SESSION
                continue
            assert s.add(sid, b"v%d" % timeout, timeout) == wire.OK
            if len(model) >= limit:
                soonest = min(model.values())[0]
                victims = [k for k, (e, _) in model.items() if e == soonest]
                # ties may go either way: drop whichever the store dropped
                gone = [k for k in victims if not s.have(k)]
                assert len(gone) == 1
                del model[gone[0]]
            model[sid] = (now + timeout, b"v%d" % timeout)
        elif kind == "g":
            assert s.get(sid) == (model[sid][1] if sid in model else None)
        elif kind == "r":
            assert s.remove(sid) == (sid in model)
            model.pop(sid, None)
        else:
            assert s.have(sid) == (sid in model)
        assert len(s) <= limit


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="tracemalloc counts CPython's heap")
def test_a_stored_session_costs_at_most_160_bytes_beyond_its_id_and_data(clock):
    import tracemalloc
    s = SessionStore(clock, max_sessions=100000)
    for i in range(2000):
        s.add(b"warm-%027d" % i, b"w" * 200, 3600000)
    ids = [b"mem-%028d" % i for i in range(20000)]
    data = [(b"%08d" % i) * 25 for i in range(20000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for sid, blob in zip(ids, data):
            assert s.add(sid, blob, 3600000) == wire.OK
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The test's own id and data objects exist before and after; what the store adds is
    # its record (which holds a copy of both) plus its share of the dict and the heap.
    per_session = grown / len(ids) - (32 + 200)
    assert per_session <= 160, per_session
    assert s.get(ids[123]) == data[123]
