"""dc_test's model of the cache, and its command line."""

from __future__ import annotations

import pytest

from distcache import loadtest
from distcache.cachemodel import CacheModel, Presence, Session, Surprise


def model(count=3, capacity=0):
    return CacheModel([Session(b"id-%d" % i, b"data-%d" % i) for i in range(count)],
                      capacity=capacity, slack=0.25)


def test_a_new_session_is_absent_and_add_makes_it_present():
    m = model()
    assert m.presence(0, 0.0, 0.0) is Presence.ABSENT
    m.add_done(0, 0.0, 0.01, 10000, 0x00)
    assert m.presence(0, 1.0, 1.01) is Presence.PRESENT
    m.get_done(0, 1.0, 1.01, b"data-0")
    m.have_done(0, 1.0, 1.01, True)
    m.add_done(0, 1.0, 1.01, 10000, 0x65)
    m.remove_done(0, 2.0, 2.01, True)
    assert m.presence(0, 3.0, 3.0) is Presence.ABSENT


@pytest.mark.parametrize("check", [
    lambda m: m.add_done(0, 1, 1, 1000, 0x65),
    lambda m: m.get_done(0, 1, 1, b"data-0"),
    lambda m: m.have_done(0, 1, 1, True),
    lambda m: m.remove_done(0, 1, 1, True),
    lambda m: m.add_done(0, 1, 1, 1000, 0x64),
])
def test_answers_impossible_for_an_absent_session(check):
    with pytest.raises(Surprise):
        check(model())


@pytest.mark.parametrize("check", [
    lambda m: m.add_done(0, 1, 1, 1000, 0x00),
    lambda m: m.get_done(0, 1, 1, None),
    lambda m: m.get_done(0, 1, 1, b"data-1"),
    lambda m: m.have_done(0, 1, 1, False),
    lambda m: m.remove_done(0, 1, 1, False),
])
def test_answers_impossible_for_a_present_session(check):
    m = model()
    m.add_done(0, 0, 0, 60000, 0x00)
    with pytest.raises(Surprise):
        check(m)


def test_near_its_expiry_a_session_may_be_either_and_the_answer_settles_it():
    m = model()
    m.add_done(0, 0.0, 0.01, 1000, 0x00)  # expires between 1.0 and 1.01
    assert m.presence(0, 0.5, 0.6) is Presence.PRESENT
    assert m.presence(0, 0.8, 0.9) is Presence.EITHER   # within the slack
    assert m.presence(0, 1.0, 1.0) is Presence.EITHER
    assert m.presence(0, 1.3, 1.3) is Presence.ABSENT
    m.have_done(0, 1.0, 1.0, True)                      # still there: fine
    m.get_done(0, 1.05, 1.05, None)                     # now gone: fine, and remembered
    assert m.presence(0, 1.06, 1.06) is Presence.ABSENT
    with pytest.raises(Surprise):
        m.get_done(0, 1.07, 1.07, b"data-0")


def test_an_expired_session_may_be_added_again():
    m = model()
    m.add_done(0, 0.0, 0.0, 1000, 0x00)
    m.add_done(0, 2.0, 2.0, 1000, 0x00)
    assert m.presence(0, 2.5, 2.5) is Presence.PRESENT


def test_a_full_cache_may_evict_any_other_session():
    m = model(count=3, capacity=2)
    m.add_done(0, 0, 0, 60000, 0x00)
    m.add_done(1, 0, 0, 60000, 0x00)
    assert m.presence(0, 1, 1) is Presence.PRESENT
    m.add_done(2, 1, 1, 60000, 0x00)    # the cache had to make room
    assert m.presence(0, 2, 2) is Presence.EITHER
    assert m.presence(2, 2, 2) is Presence.PRESENT
    m.get_done(0, 2, 2, None)           # session 0 was the one evicted
    m.get_done(1, 2, 2, b"data-1")      # session 1 was kept: certain again
    assert m.presence(1, 3, 3) is Presence.PRESENT
    assert m.held == 2


def test_without_a_capacity_nothing_is_evictable():
    m = model(count=3, capacity=0)
    for i in range(3):
        m.add_done(i, 0, 0, 60000, 0x00)
    assert all(m.presence(i, 1, 1) is Presence.PRESENT for i in range(3))


def test_command_line_c_flags_and_long_forms():
    s = loadtest.parse_args(["-connect", "UNIX:/x", "-sessions", "4", "-persistent",
                             "--datamin=10", "--datamax", "20", "-timeout", "2",
                             "-timevar", "0.5", "-progress", "7", "-seed", "3"])
    assert s.connect == "UNIX:/x" and s.sessions == 4 and s.persistent
    assert (s.datamin, s.datamax, s.timeout, s.timevar) == (10, 20, 2.0, 0.5)
    assert s.ops == 10 * 4 * 4 and s.progress == 7 and s.seed == 3 and s.capacity == 512
    defaults = loadtest.parse_args(["--connect", "IP:127.0.0.1:9"])
    assert (defaults.sessions, defaults.datamin, defaults.datamax, defaults.timeout,
            defaults.timevar, defaults.ops, defaults.persistent) == (10, 50, 2100, 60, 5, 1000,
                                                                      False)
    assert loadtest.parse_args(["-connect", "UNIX:/x", "-ops", "5"]).ops == 5
    for help_flag in ("-h", "-help", "-?", "--help"):
        assert loadtest.parse_args(["-connect", "UNIX:/x", help_flag]) is None


@pytest.mark.parametrize("argv, message", [
    ([], "must provide -connect"),
    (["-connect"], "requires an argument"),
    (["-connect", "UNIX:/x", "-bogus"], "not recognised"),
    (["-connect", "UNIX:/x", "stray"], "not recognised"),
    (["-connect", "UNIX:/x", "-timeout", "5", "-timevar", "5"], "strictly smaller"),
    (["-connect", "UNIX:/x", "-timeout", "3601"], "invalid argument"),
    (["-connect", "UNIX:/x", "-datamin", "3"], "at least 4"),
    (["-connect", "UNIX:/x", "-datamin", "100", "-datamax", "50"], "at least -datamin"),
    (["-connect", "UNIX:/x", "-sessions", "0"], "invalid argument"),
    (["-connect", "UNIX:/x", "-ops", "1000001"], "invalid argument"),
    (["-connect", "UNIX:/x", "-ops", "many"], "invalid argument"),
])
def test_command_line_errors(argv, message):
    with pytest.raises(loadtest.UsageError, match=message):
        loadtest.parse_args(argv)


def test_timeouts_follow_the_c_tool():
    import random
    s = loadtest.parse_args(["-connect", "UNIX:/x", "-timeout", "60", "-timevar", "5"])
    rng = random.Random(1)
    picks = [loadtest.pick_timeout_ms(s, rng) for _ in range(2000)]
    assert 55000 <= min(picks) and max(picks) < 65000
    s = loadtest.parse_args(["-connect", "UNIX:/x", "-timeout", "3", "-timevar", "0"])
    assert loadtest.pick_timeout_ms(s, rng) == 3000


def test_sessions_have_the_c_tools_sizes():
    import random
    s = loadtest.parse_args(["-connect", "UNIX:/x", "-sessions", "300", "-datamin", "60",
                             "-datamax", "70"])
    sessions = loadtest.make_sessions(s, random.Random(2))
    assert all(10 <= len(x.session_id) <= 63 for x in sessions)
    assert all(60 <= len(x.data) <= 70 for x in sessions)
    assert len({x.session_id for x in sessions}) == 300
