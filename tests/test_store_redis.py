"""The Redis session store against real ``redis-server`` processes: semantics, limits, outages.

The store runs on asyncio (as under Twisted's asyncio reactor); each test drives it with
``asyncio.run``.  The local store, on a fixed clock, is the reference its answers must match.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from distcache import wire
from distcache.store import SessionStore
from distcache.store_redis import (Outage, RedisSessionStore, StoreURLError, check,
                                   parse_store_url, shard_limits, shard_tags, shown)
from redis_support import (RedisClusterNodes, RedisServer, needs_redis, needs_redis_py,
                           redis_dir)

pytestmark = needs_redis_py


# -- URLs, shards and the outage table: no Redis needed -------------------------------

@pytest.mark.parametrize("url,cluster,nodes,shards,db_path", [
    ("redis://127.0.0.1:6380", False, (("127.0.0.1", 6380),), 1, ""),
    ("redis://cache.example.org/3", False, (("cache.example.org", 6379),), 1, "/3"),
    ("rediss://:s3cret@h:7000/0", False, (("h", 7000),), 1, "/0"),
    ("redis://user:pw@[::1]:7001", False, (("::1", 7001),), 1, ""),
    ("redis+cluster://a:7000,b:7001,[::1]:7002", True,
     (("a", 7000), ("b", 7001), ("::1", 7002)), 16, ""),
    ("rediss+cluster://:pw@a:7000?shards=4", True, (("a", 7000),), 4, ""),
])
def test_store_urls(url, cluster, nodes, shards, db_path):
    target = parse_store_url(url)
    assert (target.cluster, target.nodes, target.shards) == (cluster, nodes, shards)
    assert target.url.endswith(db_path)
    assert "pw" not in target.shown and "s3cret" not in target.shown
    assert target.timeout == 1.0


@pytest.mark.parametrize("url,message", [
    ("memcached://h:1", "the store is 'local' or a"),
    ("redis://", "no host:port"),
    ("redis://h:0", "bad port"),
    ("redis://h:http", "bad port"),
    ("redis://a:1,b:2", "several hosts need redis\\+cluster"),
    ("redis://h:1/x", "the database is a number"),
    ("redis+cluster://h:1/2", "only database 0"),
    ("redis+cluster://h:1?shards=0", "shards is a number"),
    ("redis://h:1?timeout=0", "timeout is in seconds"),
    ("redis://h:1?timeout=soon", "timeout is in seconds"),
])
def test_bad_store_urls(url, message):
    with pytest.raises(StoreURLError, match=message):
        parse_store_url(url)


def test_sessions_must_cover_the_shards():
    assert check("redis+cluster://h:1?shards=4", 4).shards == 4
    with pytest.raises(StoreURLError, match="fewer than its 4 shards"):
        check("redis+cluster://h:1?shards=4", 3)
    assert shown("local") == "local"
    assert shown("redis://:pw@h:1/2") == "redis://h:1/2"


@given(st.text(max_size=60))
def test_any_store_text_parses_or_is_refused_clearly(text):
    for candidate in (text, "redis://" + text, "redis+cluster://" + text):
        try:
            parse_store_url(candidate)
        except StoreURLError:
            pass


def test_shard_tags_spread_over_the_slot_space():
    from redis.crc import key_slot
    for count in (1, 3, 16, 100):
        tags = shard_tags(count)
        assert len(set(tags)) == count
        for i, tag in enumerate(tags):
            assert i * 16384 // count <= key_slot(tag) < (i + 1) * 16384 // count
    assert shard_tags(16) == shard_tags(16)  # every dc_server picks the same


@pytest.mark.parametrize("total,count", [(512, 1), (512, 16), (17, 16), (16, 16), (1000, 7)])
def test_shard_limits_sum_to_the_session_limit(total, count):
    limits = shard_limits(total, count)
    assert sum(limits) == total and max(limits) - min(limits) <= 1 and min(limits) >= 1


def outage_events():
    events = []

    def observe(event):
        if event.get("log_namespace") == "distcache.store_redis.Outage":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    return events, lambda: globalLogPublisher.removeObserver(observe)


def test_an_outage_is_logged_once_at_each_end():
    clock = Clock()
    events, stop = outage_events()
    try:
        outage = Outage("redis://h:1", clock.seconds)
        outage.answered()
        assert events == [] and not outage.down
        outage.failed("refused")
        clock.advance(2.5)
        outage.failed("refused")
        outage.failed("timed out")
        assert outage.down and len(events) == 1
        outage.answered()
        outage.answered()
        assert not outage.down and len(events) == 2
        assert events[1]["failed"] == 3 and events[1]["seconds"] == 2.5
        outage.failed("again")
        assert len(events) == 3 and outage.outages == 2 and outage.failures == 4
    finally:
        stop()


# -- a real standalone Redis -----------------------------------------------------------

@pytest.fixture(scope="module")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    directory = redis_dir()
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    directory = redis_dir()
    cluster = RedisClusterNodes(directory).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(directory, ignore_errors=True)


def run(url, body, sessions=512, **kw):
    """Run ``body(store, call)`` on a fresh store; ``call`` awaits a store Deferred."""
    async def main():
        store = RedisSessionStore(parse_store_url(url), sessions, **kw)
        loop = asyncio.get_running_loop()

        async def call(d):
            return await d.asFuture(loop)
        try:
            return await body(store, call)
        finally:
            await store.aclose()
    return asyncio.run(main())


def local_answer(store, op, sid, data=b"", ttl=0):
    if op == "add":
        return store.add(sid, data, ttl)
    return getattr(store, op)(sid)


async def redis_answers(store, call, script):
    """Each step alone, so that the order of effects is the script's."""
    return [await call(local_answer(store, *step)) for step in script]


SCRIPT = [
    ("add", b"a", b"alpha", 50000), ("add", b"a", b"again", 90000), ("get", b"a"),
    ("have", b"a"), ("have", b"b"), ("get", b"b"), ("remove", b"b"),
    ("add", b"b", b"beta", 40000), ("add", b"c", b"gamma", 60000),
    ("add", b"d", b"delta", 70000),          # the fourth of three: b expires soonest, goes
    ("get", b"b"), ("have", b"a"), ("have", b"c"), ("have", b"d"),
    ("add", b"z", b"zero", 0),               # accepted, never visible; still makes room (a)
    ("get", b"z"), ("have", b"a"), ("add", b"z", b"zero", 0),
    ("add", b"c", b"again", 0),              # a live id is refused even with timeout 0
    ("remove", b"c"), ("remove", b"c"), ("get", b"c"), ("add", b"c", b"back", 1000),
    ("get", b"c"), ("get", b"d"),
]


@needs_redis
def test_standalone_answers_as_the_local_store(redis_server):
    redis_server.flush()
    reference = SessionStore(Clock(), 3)
    expected = [local_answer(reference, *step) for step in SCRIPT]
    got = run(redis_server.url, lambda store, call: redis_answers(store, call, SCRIPT), 3)
    assert got == expected
    assert wire.ERR_MATCHING_SESSION in got and wire.OK in got


ids = st.sampled_from([b"s%d" % i for i in range(6)])
steps = st.one_of(
    st.tuples(st.just("add"), ids, st.binary(min_size=1, max_size=40),
              st.sampled_from([0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000])),
    st.tuples(st.sampled_from(["get", "have", "remove"]), ids))


@needs_redis
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=st.lists(steps, max_size=30), limit=st.integers(1, 4))
def test_any_script_answers_as_the_local_store(redis_server, script, limit):
    redis_server.flush()
    # Every ADD gets its own timeout, 10 s from any other: the few milliseconds Redis's
    # clock moves during a script can then neither reorder expiries nor turn a tie
    # (which the frozen reference breaks by id, Redis by time) into a different eviction.
    script = [(step[0], step[1], step[2], 10_000 * (i + 1) if step[3] else 0)
              if step[0] == "add" else step for i, step in enumerate(script)]
    reference = SessionStore(Clock(), limit)
    expected = [local_answer(reference, *step) for step in script]
    assert run(redis_server.url,
               lambda store, call: redis_answers(store, call, script), limit) == expected


@needs_redis
def test_pipelined_requests_answer_in_order(redis_server):
    redis_server.flush()

    async def body(store, call):
        adds = [store.add(b"id%d" % i, b"data%d" % i, 60000) for i in range(500)]
        gets = [store.get(b"id%d" % i) for i in range(0, 520, 5)]
        return ([await call(d) for d in adds], [await call(d) for d in gets])
    adds, gets = run(redis_server.url, body, 1000)
    assert adds == [wire.OK] * 500
    assert gets == [b"data%d" % i if i < 500 else None for i in range(0, 520, 5)]


@needs_redis
def test_sessions_expire(redis_server):
    redis_server.flush()

    async def body(store, call):
        assert await call(store.add(b"brief", b"x" * 50, 200)) == wire.OK
        assert await call(store.get(b"brief")) == b"x" * 50
        deadline = time.monotonic() + 5
        while await call(store.have(b"brief")):
            assert time.monotonic() < deadline, "a 200 ms session outlived 5 s"
            await asyncio.sleep(0.05)
        return await call(store.add(b"brief", b"y" * 50, 1000))
    assert run(redis_server.url, body) == wire.OK


@needs_redis
def test_the_count_follows_the_index(redis_server):
    redis_server.flush()

    async def body(store, call):
        for i in range(7):
            await call(store.add(b"n%d" % i, b"v", 60000))
        await call(store.remove(b"n0"))
        len(store)
        deadline = time.monotonic() + 5
        while len(store) != 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        return len(store)
    assert run(redis_server.url, body, 5) == 5


# -- outages: a stopped (slow) Redis and a dead one -------------------------------------

@needs_redis
def test_a_frozen_redis_answers_misses_within_the_bound_then_recovers():
    directory = redis_dir()
    server = RedisServer(directory).start()
    events, stop_watching = outage_events()

    async def body(store, call):
        assert await call(store.add(b"kept", b"session", 60000)) == wire.OK
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answers = await asyncio.gather(
                call(store.get(b"kept")), call(store.have(b"kept")),
                call(store.remove(b"kept")), call(store.add(b"new", b"session", 60000)))
            waited = time.monotonic() - started
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert answers == [None, False, False, wire.NOTOK]
        assert 0.2 <= waited < 2.0
        # Requests Redis had read before it froze still run when it thaws (a refused
        # REMOVE may yet remove), so recovery is judged on fresh sessions.
        deadline = time.monotonic() + 10
        while await call(store.add(b"after", b"thaw", 60000)) != wire.OK:
            assert time.monotonic() < deadline, "the store did not recover"
            await asyncio.sleep(0.1)
        return await call(store.get(b"after")) == b"thaw"

    try:
        assert run(server.url + "?timeout=0.3", body)
        assert [e["log_level"].name for e in events] == ["warn", "info"]
    finally:
        stop_watching()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@needs_redis
def test_a_killed_redis_mid_load_costs_misses_not_hangs():
    directory = redis_dir()
    server = RedisServer(directory).start()
    events, stop_watching = outage_events()

    async def body(store, call):
        answers, slowest, n = [], 0.0, 0
        deadline = time.monotonic() + 30
        restarted = False
        while time.monotonic() < deadline:
            batch = [store.add(b"k%d" % (n + i), b"v", 60000) for i in range(32)]
            started = time.monotonic()
            results = [await call(d) for d in batch]
            slowest = max(slowest, time.monotonic() - started)
            answers.append(results)
            n += 32
            if len(answers) == 20:
                server.stop()
            elif len(answers) > 20 and not restarted and time.monotonic() > 0:
                if any(r == wire.NOTOK for r in results):
                    server.start()   # same port, empty again
                    restarted = True
            elif restarted and results == [wire.OK] * 32:
                break
        return answers, slowest

    try:
        answers, slowest = run(server.url + "?timeout=0.5", body)
        assert all(r in (wire.OK, wire.NOTOK) for batch in answers for r in batch)
        assert answers[-1] == [wire.OK] * 32, "the store did not reconnect"
        assert any(wire.NOTOK in batch for batch in answers)
        assert slowest < 2.5
        assert [e["log_level"].name for e in events] == ["warn", "info"]
    finally:
        stop_watching()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- a real three-node Cluster -----------------------------------------------------------

@needs_redis
def test_cluster_answers_as_the_local_store_with_one_shard(redis_cluster):
    redis_cluster.flush()
    reference = SessionStore(Clock(), 3)
    expected = [local_answer(reference, *step) for step in SCRIPT]
    got = run(redis_cluster.url + "?shards=1", lambda s, call: redis_answers(s, call, SCRIPT), 3)
    assert got == expected


@needs_redis
def test_cluster_shards_keep_the_total_under_the_limit(redis_cluster):
    redis_cluster.flush()

    async def body(store, call):
        adds = [store.add(b"c%d" % i, b"data", 60000 + i) for i in range(300)]
        assert [await call(d) for d in adds] == [wire.OK] * 300
        present = [await call(store.have(b"c%d" % i)) for i in range(300)]
        return sum(present)
    held = run(redis_cluster.url + "?shards=6", body, 60)
    assert held == 60
    keys = [int(redis_cluster_dbsize(n.port)) for n in redis_cluster.nodes]
    assert all(k > 0 for k in keys), "the shards did not spread over the nodes"


def redis_cluster_dbsize(port):
    from redis_support import cli
    return cli(port, "DBSIZE")
