"""dc_client failing over between two real dc_server processes that share a Redis store.

The first dc_server is killed (SIGKILL) under load: every request still gets exactly one
reply in order, sessions added before the kill are found through the second, and once
the first is back dc_client uses it again within one retry period.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

from distcache import wire
from distcache.client_tap import ClientProxyService

from cache_support import free_tcp_port, repo_env
from polling import poll_until
from proxy_support import collector_factory
from redis_support import RedisServer, needs_redis, needs_redis_py, port_open

pytestmark = [needs_redis, needs_redis_py]

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
RETRY_MS = 1000
CLIENTS = 10
SESSIONS_EACH = 5
WINDOW = 4


class DcServer:
    """``twistd dc_server --store URL`` on a fixed loopback port, logging to a file."""

    def __init__(self, store: str, directory: str, name: str):
        self.store = store
        self.port = free_tcp_port()
        self.log = os.path.join(directory, f"{name}.log")
        self.process = None

    @property
    def address(self) -> str:
        return f"IP:127.0.0.1:{self.port}"

    def start(self):
        """Spawn it; a Deferred that fires once it accepts connections."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "--logfile=-", "dc_server",
                          "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                          "--store", self.store],
                env=repo_env(), stdout=out, stderr=subprocess.STDOUT)
        return poll_until(lambda: port_open(self.port), timeout=60, interval=0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(15)


def session(client: int, n: int):
    return b"sid-%d-%d" % (client, n), b"der-%d-%d-" % (client, n) * 20


class LoadClient:
    """One local connection that keeps WINDOW GETs of its own sessions outstanding."""

    def __init__(self, reactor, index: int, protocol):
        self.reactor = reactor
        self.index = index
        self.protocol = protocol
        self.sent = []          # (uid, expected data or None for an ADD)
        self.running = False
        original = protocol.dataReceived

        def received(data):
            before = len(protocol.replies)
            original(data)
            for _ in range(len(protocol.replies) - before):
                reactor.callLater(0.001, self.get_next)
        protocol.dataReceived = received

    def send(self, op: int, payload: bytes, expected) -> None:
        uid = len(self.sent) + 1
        self.sent.append((uid, expected))
        self.protocol.transport.write(wire.encode_request(uid, op, payload))

    def add_all(self) -> None:
        for n in range(SESSIONS_EACH):
            sid, data = session(self.index, n)
            self.send(wire.OP_ADD, wire.encode_add_payload(sid, data, 600000), None)

    def get_next(self) -> None:
        if self.running:
            sid, data = session(self.index, len(self.sent) % SESSIONS_EACH)
            self.send(wire.OP_GET, sid, data)

    def answered(self) -> bool:
        return len(self.protocol.replies) == len(self.sent)

    def kinds(self, start: int = 0):
        """Each reply from ``start`` on: found, missing, empty (no server) or disconnected."""
        out = []
        for (uid, expected), reply in zip(self.sent[start:], self.protocol.replies[start:]):
            assert reply.uid == uid
            if reply.payload == b"\x02":
                out.append("disconnected")
            elif expected is None:
                out.append("added" if reply.payload == b"\x00" else f"add {reply.payload!r}")
            elif reply.payload == expected:
                out.append("found")
            else:
                out.append("empty" if reply.payload == b"" else "missing")
        return out


@pytest_twisted.inlineCallbacks
def test_a_killed_first_server_fails_over_to_the_second_and_back_under_load():
    from twisted.internet import reactor
    directory = tempfile.mkdtemp(prefix="dcf", dir="/tmp")
    redis = RedisServer(os.path.join(directory, "redis")).start()
    # A store that misses its deadline closes the server's connections (and dc_client
    # answers empty until it is back): what this test is about is the kill, so a loaded
    # machine gets a generous deadline rather than failovers of its own.
    store = redis.url + "?timeout=10"
    first = DcServer(store, directory, "first")
    second = DcServer(store, directory, "second")
    proxy = None
    clients = []
    try:
        yield defer.gatherResults([first.start(), second.start()])
        local = f"{directory}/local"
        proxy = ClientProxyService(f"UNIX:{local}", [first.address, second.address],
                                   retry_ms=RETRY_MS, reactor=reactor)
        proxy.privilegedStartService()
        proxy.startService()
        link = proxy.link
        yield poll_until(lambda: link.at == 0)
        endpoint = UNIXClientEndpoint(reactor, local)
        for i in range(CLIENTS):
            protocol = yield endpoint.connect(collector_factory())
            clients.append(LoadClient(reactor, i, protocol))
        for client in clients:
            client.add_all()
        yield poll_until(lambda: all(c.answered() for c in clients))
        assert {k for c in clients for k in c.kinds()} == {"added"}

        for client in clients:
            client.running = True
            for _ in range(WINDOW):
                client.get_next()
        yield poll_until(lambda: all(len(c.protocol.replies) >= SESSIONS_EACH + 20
                                     for c in clients))
        first.kill()
        killed_at = [len(c.sent) for c in clients]
        yield poll_until(lambda: link.at == 1, timeout=30, interval=0.001)
        empty_before = link.answered_unreachable
        yield poll_until(lambda: all(len(c.protocol.replies) >= n + 20
                                     for c, n in zip(clients, killed_at)), timeout=30)
        # Through the second server every session added before the kill is found.
        on_second = [len(c.sent) for c in clients]
        yield poll_until(lambda: all(len(c.protocol.replies) >= n + 10
                                     for c, n in zip(clients, on_second)), timeout=30)
        for client, n in zip(clients, on_second):
            assert set(client.kinds(n)) == {"found"}, client.kinds(n)

        yield first.start()
        back_at = reactor.seconds()
        yield poll_until(lambda: link.at == 0, timeout=30, interval=0.005)
        took = reactor.seconds() - back_at
        assert took <= RETRY_MS / 1000.0 + 0.5, took
        on_first = [len(c.sent) for c in clients]
        yield poll_until(lambda: all(len(c.protocol.replies) >= n + 10
                                     for c, n in zip(clients, on_first)), timeout=30)
        for client in clients:
            client.running = False
        # Every request sent got exactly one reply, in order (kinds() checks the uids).
        yield poll_until(lambda: all(c.answered() for c in clients), timeout=30)
        for client, n_kill, n_first in zip(clients, killed_at, on_first):
            seen = client.kinds()
            assert set(seen[:n_kill - WINDOW]) <= {"added", "found"}
            assert set(seen) <= {"added", "found", "empty", "disconnected"}, set(seen)
            assert set(seen[n_first:]) == {"found"}
        print(f"\nfailover: {link.answered_disconnected} requests answered DISCONNECTED, "
              f"{link.answered_unreachable} empty ({empty_before} before the second took "
              f"over); back on the first {took * 1000:.0f} ms after it listened "
              f"(retry {RETRY_MS} ms); {link.switches} switch back")
        assert link.switches == 1
    finally:
        for client in clients:
            client.running = False
            client.protocol.transport.abortConnection()
        if proxy is not None:
            yield proxy.stopService()
        first.stop()
        second.stop()
        redis.stop()
        yield task.deferLater(reactor, 0.01, lambda: None)
        shutil.rmtree(directory, ignore_errors=True)
