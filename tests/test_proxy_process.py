"""dc_client against a real dc_server process that is killed (SIGKILL) and restarted under load."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint

from distcache import wire
from distcache.client_tap import ClientProxyService

from polling import poll_until
from proxy_support import collector_factory

ROOT = Path(__file__).resolve().parents[1]
RETRY_MS = 200


def start_server(path: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.Popen(
        [sys.executable, "-c", "from distcache.cflags import dc_server; dc_server()",
         "-listen", f"UNIX:{path}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class LoopingClient:
    """Sends a HAVE whenever the previous reply arrived, pausing a little between them."""

    def __init__(self, reactor, protocol):
        self.reactor = reactor
        self.protocol = protocol
        self.sent = 0
        self.running = True
        protocol.on_reply = self._next

    def start(self):
        self._send()

    def _send(self):
        if self.running:
            self.sent += 1
            self.protocol.transport.write(wire.encode_request(self.sent, wire.OP_HAVE, b"k"))

    def _next(self):
        self.reactor.callLater(0.005, self._send)


def kinds(replies):
    """Each reply as 'served' (a real answer), 'disconnected' (0x02) or 'empty' (server away)."""
    names = {b"": "empty", b"\x02": "disconnected"}
    return [names.get(m.payload, "served") for m in replies]


@pytest_twisted.inlineCallbacks
def test_real_server_killed_and_restarted_under_load():
    from twisted.internet import reactor
    directory = tempfile.mkdtemp(prefix="dcp", dir="/tmp")
    server_path, local_path = f"{directory}/server", f"{directory}/local"
    server = start_server(server_path)
    proxy = ClientProxyService(f"UNIX:{local_path}", f"UNIX:{server_path}", retry_ms=RETRY_MS,
                               reactor=reactor)
    proxy.privilegedStartService()
    proxy.startService()
    link = proxy.link
    clients = []

    try:
        yield poll_until(lambda: link.connected)
        endpoint = UNIXClientEndpoint(reactor, local_path)
        protocols = yield defer.gatherResults([endpoint.connect(collector_factory())
                                               for _ in range(20)])
        for protocol in protocols:
            original = protocol.dataReceived

            def received(data, protocol=protocol, original=original):
                before = len(protocol.replies)
                original(data)
                if len(protocol.replies) > before:
                    protocol.on_reply()
            protocol.dataReceived = received
            clients.append(LoopingClient(reactor, protocol))
        for client in clients:
            client.start()
        yield poll_until(lambda: all(len(c.protocol.replies) >= 5 for c in clients))

        server.send_signal(signal.SIGKILL)
        server.wait()
        yield poll_until(lambda: not link.connected)
        down_at = [len(c.protocol.replies) for c in clients]
        yield poll_until(lambda: all(len(c.protocol.replies) >= n + 6
                                for c, n in zip(clients, down_at)))

        server = start_server(server_path)
        yield poll_until(lambda: link.connected)
        up_at = [len(c.protocol.replies) for c in clients]
        yield poll_until(lambda: all(len(c.protocol.replies) >= n + 5
                                for c, n in zip(clients, up_at)))
        for client in clients:
            client.running = False
        # Nothing is left hanging: every request sent got exactly one reply.
        yield poll_until(lambda: all(len(c.protocol.replies) == c.sent for c in clients))
        for client, n_down, n_up in zip(clients, down_at, up_at):
            seen = kinds(client.protocol.replies)
            assert [m.uid for m in client.protocol.replies] == list(range(1, client.sent + 1))
            assert set(seen[:5]) == {"served"}
            # (the one request in flight at the kill may be answered just after down_at)
            assert set(seen[n_down + 1:n_down + 6]) == {"empty"}
            assert set(seen) <= {"served", "empty", "disconnected"}
            assert set(seen[n_up + 1:]) == {"served"}
    finally:
        for client in clients:
            client.running = False
            client.protocol.transport.abortConnection()
        yield proxy.stopService()
        if server.poll() is None:
            server.terminate()
            server.wait()
        yield task.deferLater(reactor, 0.01, lambda: None)
        shutil.rmtree(directory, ignore_errors=True)
