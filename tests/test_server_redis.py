"""dc_server processes on a Redis store: sessions shared, kept across restarts, and bounded
answers while Redis or a Cluster node is killed under load."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from cache_support import free_tcp_port, repo_env, wait_until_connectable
from distcache import wire
from distcache.blocking import Mode, SessionCache
from distcache.client import connect
from redis_support import (RedisClusterNodes, RedisServer, needs_redis, needs_redis_py,
                           redis_dir)

pytestmark = [needs_redis, needs_redis_py]

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class RedisDcServer:
    """``twistd dc_server --store URL`` on a loopback TCP port."""

    def __init__(self, store: str, sessions: int = 512):
        self.store = store
        self.sessions = sessions
        self.port = free_tcp_port()
        self.process = None

    @property
    def address(self) -> str:
        return f"IP:127.0.0.1:{self.port}"

    def start(self) -> "RedisDcServer":
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile=-", "dc_server",
                      "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                      "--sessions", str(self.sessions), "--store", self.store],
            env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_until_connectable(__import__("socket").AF_INET, ("127.0.0.1", self.port))
        return self

    def stop(self) -> str:
        """Stop it with SIGTERM; its log."""
        if self.process is None:
            return ""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=15)
        self.process = None
        return out.decode(errors="replace")


@pytest.fixture
def standalone():
    directory = redis_dir()
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_two_dc_servers_share_sessions_and_a_restart_keeps_them(standalone):
    first = RedisDcServer(standalone.url).start()
    second = RedisDcServer(standalone.url).start()
    try:
        a = SessionCache(first.address, Mode.PERSISTENT, timeout=5)
        b = SessionCache(second.address, Mode.PERSISTENT, timeout=5)
        assert a.add(b"shared-session", b"der" * 40, 60000)
        assert b.get(b"shared-session") == b"der" * 40
        assert b.add_status(b"shared-session", b"other", 60000) == wire.ERR_MATCHING_SESSION
        assert b.has(b"shared-session")
        a.close()
        log = first.stop()
        assert "store redis://127.0.0.1:" in log and "AsyncioSelectorReactor" in log
        first.start()
        a = SessionCache(first.address, Mode.PERSISTENT, timeout=5)
        assert a.get(b"shared-session") == b"der" * 40
        assert b.remove(b"shared-session")
        assert a.get(b"shared-session") is None
        a.close()
        b.close()
    finally:
        first.stop()
        second.stop()


def test_the_local_store_keeps_the_default_reactor():
    server = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "--logfile=-", "dc_server",
                  "--listen", f"tcp:{free_tcp_port()}:interface=127.0.0.1"],
        env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        seen = b""
        while b"dc_server started" not in seen:
            assert time.monotonic() < deadline, seen
            seen += server.stdout.readline()
        assert b"EPollReactor" in seen and b"store local" in seen
    finally:
        server.terminate()
        server.communicate(timeout=15)


async def pipelined_adds(cache, start: int, count: int = 32):
    """``count`` ADDs in flight on one connection; their results and the time they took."""
    began = time.monotonic()
    results = await defer.gatherResults(
        [cache.add_status(b"load-%d" % (start + i), b"s" * 100, 60000) for i in range(count)])
    return results, time.monotonic() - began


async def load_until(cache, condition, limit: float = 40.0):
    """Batches of 32 pipelined ADDs until ``condition(batch_number, results)``."""
    batches, slowest, n = [], 0.0, 0
    deadline = time.monotonic() + limit
    while True:
        results, took = await pipelined_adds(cache, n)
        n += 32
        batches.append(results)
        slowest = max(slowest, took)
        if condition(len(batches), results) or time.monotonic() > deadline:
            return batches, slowest


@pytest_twisted.ensureDeferred
async def test_redis_killed_mid_load_answers_within_the_bound(standalone):
    server = RedisDcServer(standalone.url + "?timeout=0.5").start()
    try:
        cache = await connect(reactor, server.address)

        def step(number, results):
            if number == 10:
                standalone.stop()
            if number > 10 and standalone.process is None and wire.NOTOK in results:
                standalone.start()
            return standalone.process is not None and number > 10 and \
                results == [wire.OK] * 32
        batches, slowest = await load_until(cache, step)
        assert batches[:10] == [[wire.OK] * 32] * 10
        assert any(wire.NOTOK in b for b in batches[10:]), "the outage was not seen"
        assert batches[-1] == [wire.OK] * 32, "dc_server did not reconnect to Redis"
        assert slowest < 3.0
        cache.transport.loseConnection()
    finally:
        log = server.stop()
    assert log.count("unreachable") == 1 and log.count("answers again") == 1, log


@pytest.fixture(scope="module")
def cluster():
    directory = redis_dir()
    nodes = RedisClusterNodes(directory).start()
    yield nodes
    nodes.stop()
    shutil.rmtree(directory, ignore_errors=True)


def test_two_dc_servers_share_a_cluster(cluster):
    first = RedisDcServer(cluster.url).start()
    second = RedisDcServer(cluster.url).start()
    try:
        a = SessionCache(first.address, Mode.PERSISTENT, timeout=5)
        b = SessionCache(second.address, Mode.PERSISTENT, timeout=5)
        for i in range(40):
            assert a.add(b"cluster-%d" % i, b"v%d" % i, 60000)
        assert [b.get(b"cluster-%d" % i) for i in range(40)] == [b"v%d" % i for i in range(40)]
        a.close()
        b.close()
    finally:
        first.stop()
        second.stop()


@pytest_twisted.ensureDeferred
async def test_a_cluster_node_killed_mid_load(cluster):
    server = RedisDcServer(cluster.url + "?timeout=0.5").start()
    victim = cluster.nodes[1]
    try:
        cache = await connect(reactor, server.address)

        def step(number, results):
            if number == 10:
                victim.stop()
            if number > 10 and victim.process is None and wire.NOTOK in results:
                victim.start()   # its nodes.conf brings it back with its slots
            return victim.process is not None and number > 10 and \
                results == [wire.OK] * 32
        batches, slowest = await load_until(cache, step, limit=60)
        assert batches[:10] == [[wire.OK] * 32] * 10
        assert any(wire.NOTOK in b for b in batches[10:]), "the lost node was not noticed"
        assert batches[-1] == [wire.OK] * 32, "dc_server did not recover with the Cluster"
        assert set().union(*batches) <= {wire.OK, wire.NOTOK}, set().union(*batches)
        assert slowest < 3.0
        cache.transport.loseConnection()
    finally:
        log = server.stop()
        cluster.wait_ok()
    assert log.count("unreachable") >= 1 and "Traceback" not in log, log


@pytest.mark.parametrize("tap", ["server_tap", "client_tap", "snoop_tap", "dcap_tap"])
def test_importing_a_tap_module_installs_no_reactor(tap):
    # twistd imports the tap before makeService, which may still choose the reactor
    # (the Redis store needs the asyncio one).
    out = subprocess.run([sys.executable, "-c", f"import sys, distcache.{tap}; "
                          "print('twisted.internet.reactor' in sys.modules)"],
                         env=repo_env(), capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
