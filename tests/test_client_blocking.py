"""The blocking client in every mode, over real sockets, against dc_server and a faulty fake."""

from __future__ import annotations

import os

import pytest

from distcache import wire
from distcache.blocking import Mode, SessionCache, socket_target
from distcache.replies import (CacheConnectionLost, CacheTimeout, CacheUnreachable,
                               MalformedReply, UnexpectedReply)

import cache_support
from cache_support import DcServerProcess, FakeCache, first_connection_only

MODES = [
    Mode.PER_OPERATION,
    Mode.PERSISTENT,
    Mode.PERSISTENT | Mode.PERSISTENT_LATE,
    Mode.PERSISTENT | Mode.PERSISTENT_PIDCHECK,
    Mode.PERSISTENT | Mode.PERSISTENT_RETRY,
    Mode.PERSISTENT | Mode.PERSISTENT_LATE | Mode.PERSISTENT_PIDCHECK | Mode.PERSISTENT_RETRY,
]
PERSISTENT_MODES = MODES[1:]




def exercise(cache: SessionCache, tag: bytes) -> None:
    sid = b"blocking-" + tag
    assert cache.add(sid, b"payload-" + tag, 60000) is True
    assert cache.add_status(sid, b"payload-" + tag, 60000) == wire.ERR_MATCHING_SESSION
    assert cache.has(sid) is True
    assert cache.get(sid) == b"payload-" + tag
    assert cache.remove(sid) is True
    assert cache.remove(sid) is False
    assert cache.get(sid) is None
    assert cache.has(sid) is False


@pytest.mark.parametrize("mode", MODES, ids=lambda m: str(int(m)))
def test_every_mode_against_dc_server_on_unix(server, mode):
    with SessionCache(server.address, mode, timeout=5) as cache:
        exercise(cache, b"unix-%d" % mode)


@pytest.mark.parametrize("mode", [Mode.PER_OPERATION, Mode.PERSISTENT])
@pytest.mark.parametrize("form", ["IP:127.0.0.1:{port}", "tcp:host=127.0.0.1:port={port}"])
def test_tcp_addresses(server, mode, form):
    with SessionCache(form.format(port=server.tcp_port), mode, timeout=5) as cache:
        exercise(cache, b"tcp-%d-%d" % (mode, len(form)))


def test_large_sessions_cross_several_frames(server):
    with SessionCache(server.address, Mode.PERSISTENT, timeout=5) as cache:
        data = os.urandom(wire.MESSAGE_MAX - 8 - 64)
        assert cache.add(b"L" * 64, data, 60000)
        assert cache.get(b"L" * 64) == data


def test_connection_counts_per_mode(sockdir):
    with FakeCache(os.path.join(sockdir, "fake")) as fake:
        SessionCache(fake.address, Mode.PERSISTENT | Mode.PERSISTENT_LATE)
        assert fake.connections == 0  # late: nothing until first use
        persistent = SessionCache(fake.address, Mode.PERSISTENT)
        for i in range(5):
            persistent.has(b"id-%d" % i)
        per_op = SessionCache(fake.address)
        for i in range(5):
            per_op.has(b"id-%d" % i)
        persistent.close()
        assert fake.connections == 1 + 5


def test_modes_need_persistent():
    with pytest.raises(ValueError):
        SessionCache("UNIX:/nonexistent", Mode.PERSISTENT_RETRY)


def test_unreachable_cache_is_a_clear_error(sockdir):
    missing = f"UNIX:{sockdir}/nobody"
    with pytest.raises(CacheUnreachable):
        SessionCache(missing, Mode.PERSISTENT)
    with pytest.raises(CacheUnreachable):
        SessionCache(missing).has(b"x")


def test_addresses_the_blocking_client_cannot_use():
    assert socket_target("IP:127.0.0.1:9")[1] == ("127.0.0.1", 9)
    assert socket_target("IPv6:[::1]:9")[1] == ("::1", 9)
    with pytest.raises(ValueError):
        socket_target("ssl:host=example.org:port=443")


FAULTS = [
    (cache_support.garbage, MalformedReply),
    (cache_support.wrong_uid, UnexpectedReply),
    (cache_support.wrong_operation, UnexpectedReply),
    (cache_support.two_replies, UnexpectedReply),
    (cache_support.cut_short, CacheConnectionLost),
    (cache_support.silent, CacheTimeout),
]


# A reply cut short is an I/O error, which PERSISTENT_RETRY resends: tested apart below.
FAULT_CASES = [
    pytest.param(fault, error, mode, id=f"{fault.__name__}-{int(mode)}")
    for fault, error in FAULTS
    for mode in (Mode.PER_OPERATION, Mode.PERSISTENT, Mode.PERSISTENT | Mode.PERSISTENT_RETRY)
    if not (error is CacheConnectionLost and mode & Mode.PERSISTENT_RETRY)
]


@pytest.mark.parametrize("fault, error, mode", FAULT_CASES)
def test_a_faulty_reply_raises_and_the_next_call_starts_clean(sockdir, fault, error, mode):
    """Never a hang: a bounded wait, a clear error, then a fresh connection that works."""
    with FakeCache(os.path.join(sockdir, "fake"), first_connection_only(fault)) as fake:
        cache = SessionCache(fake.address, mode, timeout=0.3)
        with pytest.raises(error):
            cache.add(b"session", b"data", 60000)
        cache.timeout = 10  # the fault is bounded by 0.3 s; what follows may be slow
        assert cache.add(b"another-session", b"data", 60000) is True
        assert cache.get(b"another-session") == b"data"
        assert fake.connections == (3 if mode == Mode.PER_OPERATION else 2)
        cache.close()


def test_persistent_without_retry_reports_a_restart_then_reconnects(sockdir):
    server = DcServerProcess(os.path.join(sockdir, "cache")).start()
    try:
        cache = SessionCache(server.address, Mode.PERSISTENT, timeout=5)
        assert cache.add(b"before-restart", b"data", 60000)
        server.restart()
        with pytest.raises(CacheConnectionLost):
            cache.has(b"before-restart")
        assert cache.has(b"before-restart") is False  # a fresh server, reconnected
        cache.close()
    finally:
        server.stop()


def test_persistent_retry_resends_once_across_a_restart(sockdir):
    server = DcServerProcess(os.path.join(sockdir, "cache")).start()
    try:
        cache = SessionCache(server.address, Mode.PERSISTENT | Mode.PERSISTENT_RETRY, timeout=5)
        assert cache.add(b"before-restart", b"data", 60000)
        server.restart()
        # The old connection is dead; the request is sent again on a new one.
        assert cache.add(b"after-restart", b"data", 60000) is True
        assert cache.has(b"before-restart") is False
        assert cache.get(b"after-restart") == b"data"
        assert cache.connections == 2
        cache.close()
    finally:
        server.stop()


def test_retry_resends_a_request_whose_reply_was_cut_short(sockdir):
    """The resent ADD meets the session the first one stored: retrying is not idempotent."""
    with FakeCache(os.path.join(sockdir, "fake"),
                   first_connection_only(cache_support.cut_short)) as fake:
        cache = SessionCache(fake.address, Mode.PERSISTENT | Mode.PERSISTENT_RETRY, timeout=2)
        assert cache.add_status(b"session", b"data", 60000) == wire.ERR_MATCHING_SESSION
        assert cache.get(b"session") == b"data"
        assert fake.connections == 2 and cache.connections == 2
        cache.close()


def test_persistent_retry_gives_up_after_one_resend(sockdir):
    def hang_up(message, store, number):
        return None  # close every connection without a word
    with FakeCache(os.path.join(sockdir, "fake"), hang_up) as fake:
        cache = SessionCache(fake.address, Mode.PERSISTENT | Mode.PERSISTENT_RETRY, timeout=2)
        with pytest.raises(CacheConnectionLost):
            cache.has(b"x")
        assert fake.connections == 2


def run_in_child(body) -> int:
    """Fork; the child runs ``body`` and exits with its return value (99 on an exception)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_pidcheck_gives_a_forked_child_its_own_connection(sockdir):
    with FakeCache(os.path.join(sockdir, "fake")) as fake:
        cache = SessionCache(fake.address, Mode.PERSISTENT | Mode.PERSISTENT_PIDCHECK, timeout=5)
        assert cache.add(b"parent", b"p", 60000)
        parent_socket = cache._sock

        def child():
            ok = cache.add(b"child", b"c", 60000) and cache.get(b"parent") == b"p"
            ok = ok and cache.has(b"child") and cache.connections == 2
            return 0 if ok else 1

        assert run_in_child(child) == 0
        assert fake.connections == 2          # the child connected once, not per call
        assert cache._sock is parent_socket    # the parent keeps its own connection
        assert cache.get(b"child") == b"c"
        assert cache.connections == 1
        cache.close()


def test_without_pidcheck_a_forked_child_shares_the_parents_connection(sockdir):
    with FakeCache(os.path.join(sockdir, "fake")) as fake:
        cache = SessionCache(fake.address, Mode.PERSISTENT, timeout=5)
        assert cache.add(b"parent", b"p", 60000)
        assert run_in_child(lambda: 0 if cache.has(b"parent") else 1) == 0
        assert fake.connections == 1
        assert cache.has(b"parent")
        cache.close()


def test_a_reply_trickling_in_byte_by_byte_cannot_outlast_the_timeout(sockdir):
    """The timeout bounds the whole reply, not each read."""
    import time as clock

    def trickle(message, store, number):
        reply = FakeCache.correct(message, store, number)
        return cache_support.Trickle(reply, 0.05)

    with FakeCache(os.path.join(sockdir, "fake"), trickle) as fake:
        cache = SessionCache(fake.address, Mode.PERSISTENT, timeout=0.3)
        started = clock.monotonic()
        with pytest.raises(CacheTimeout):
            cache.add(b"session", b"data" * 10, 60000)  # 15 bytes at 20 a second
        assert clock.monotonic() - started < 0.6
