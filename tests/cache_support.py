"""Real cache servers for client tests: a dc_server process, and a small threaded fake.

The fake speaks the protocol from plain threads (no reactor), so blocking clients can be
tested against a server that misbehaves on purpose: garbage, wrong uids, a reply cut
short, silence, or sessions that are acknowledged and then forgotten.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from distcache import wire

ROOT = Path(__file__).resolve().parents[1]


def repo_env() -> Dict[str, str]:
    """The environment for a child Python that must import this checkout."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + extra))


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_connectable(family, sockaddr, deadline: float = 10.0) -> None:
    stop = time.monotonic() + deadline
    while True:
        probe = socket.socket(family, socket.SOCK_STREAM)
        try:
            probe.connect(sockaddr)
            return
        except OSError:
            if time.monotonic() > stop:
                raise
            time.sleep(0.02)
        finally:
            probe.close()


class DcServerProcess:
    """``dc_server`` in a child process, listening on a unix socket (and TCP if asked)."""

    def __init__(self, path: str, sessions: int = 512, tcp_port: Optional[int] = None,
                 extra: List[str] = ()):
        self.path = path
        self.sessions = sessions
        self.tcp_port = tcp_port
        self.extra = list(extra)
        self.process: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"UNIX:{self.path}"

    def start(self) -> "DcServerProcess":
        args = [sys.executable, "-c", "from distcache.cflags import dc_server; dc_server()",
                "-listen", self.address, "-sessions", str(self.sessions)]
        if self.tcp_port is not None:
            args += ["-listen", f"IP:127.0.0.1:{self.tcp_port}"]
        args += self.extra
        self.process = subprocess.Popen(args, env=repo_env(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until_connectable(socket.AF_UNIX, self.path)
        if self.tcp_port is not None:
            wait_until_connectable(socket.AF_INET, ("127.0.0.1", self.tcp_port))
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class DcClientProcess:
    """``dc_client`` in a child process: a local unix socket in front of ``server``."""

    def __init__(self, path: str, server: str, retry_ms: int = 200, extra: List[str] = ()):
        self.path = path
        self.server = server
        self.retry_ms = retry_ms
        self.extra = list(extra)
        self.process: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"UNIX:{self.path}"

    def start(self) -> "DcClientProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from distcache.cflags import dc_client; dc_client()",
             "-listen", self.address, "-server", self.server, "-retry", str(self.retry_ms)]
            + self.extra,
            env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_connectable(socket.AF_UNIX, self.path)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


class SendThenClose(bytes):
    """Bytes after which the fake hangs up."""


class Trickle(bytes):
    """Bytes the fake sends one at a time, ``pause`` seconds apart."""

    def __new__(cls, data: bytes, pause: float):
        self = super().__new__(cls, data)
        self.pause = pause
        return self


class FakeCache:
    """A threaded distcache server on a unix socket whose answers a test chooses.

    ``answer(message, store, connection_number)`` returns the bytes to send back
    (``None`` closes the connection without a word; ``b""`` sends nothing).  The
    default, :meth:`correct`, is an honest cache without expiry.
    """

    def __init__(self, path: str, answer: Optional[Callable] = None):
        self.path = path
        self.answer = answer or self.correct
        self.store: Dict[bytes, bytes] = {}
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._listener.settimeout(0.05)  # so the accepting thread notices close()
        self._open: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._running = True
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def address(self) -> str:
        return f"UNIX:{self.path}"

    @staticmethod
    def correct(message: wire.Message, store: Dict[bytes, bytes], number: int) -> bytes:
        op, payload = message.op, message.payload
        if op == wire.OP_ADD:
            request = wire.parse_add(payload)
            if isinstance(request, int):
                result = request
            elif request.session_id in store:
                result = wire.ERR_MATCHING_SESSION
            else:
                store[request.session_id] = request.data
                result = wire.OK
            body = bytes((result,))
        elif op == wire.OP_GET:
            body = store.get(payload, b"\x01")
        elif op == wire.OP_REMOVE:
            body = b"\x00" if store.pop(payload, None) is not None else b"\x01"
        else:
            body = b"\x00" if payload in store else b"\x01"
        return wire.encode_response(message.uid, op, body)

    def _accept(self) -> None:
        while self._running:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, number), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        decoder = wire.Decoder(expect=False)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for message in decoder.feed(data):
                    with self._lock:
                        reply = self.answer(message, self.store, number)
                    if reply is None:
                        return
                    if isinstance(reply, Trickle):
                        for i in range(len(reply)):
                            conn.sendall(reply[i:i + 1])
                            time.sleep(reply.pause)
                    elif reply:
                        conn.sendall(reply)
                    if isinstance(reply, SendThenClose):
                        return
        except (OSError, wire.ProtocolError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._running = False
        self._accepter.join(5)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in self._threads:
            thread.join(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "FakeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def first_connection_only(misbehaviour: Callable) -> Callable:
    """An answer that misbehaves on the first connection and is honest afterwards."""
    def answer(message, store, number):
        if number == 1:
            return misbehaviour(message, store, number)
        return FakeCache.correct(message, store, number)
    return answer


def garbage(message, store, number) -> bytes:
    return b"this is not the distcache protocol"


def wrong_uid(message, store, number) -> bytes:
    return wire.encode_response((message.uid + 1) & 0xFFFFFFFF, message.op, b"\x00")


def wrong_operation(message, store, number) -> bytes:
    return wire.encode_response(message.uid, (message.op + 1) % 4, b"\x00")


def cut_short(message, store, number):
    """Half of a reply, then the connection closes."""
    reply = FakeCache.correct(message, store, number)
    return SendThenClose(reply[:len(reply) // 2])


def silent(message, store, number) -> bytes:
    return b""


def two_replies(message, store, number) -> bytes:
    reply = FakeCache.correct(message, store, number)
    return reply + reply


def forgetful(message, store, number) -> bytes:
    """Acknowledges every ADD and remembers none of them."""
    reply = FakeCache.correct(message, store, number)
    store.clear()
    return reply



def short_socket_dir() -> str:
    """A fresh directory whose socket paths stay well under the unix-socket length limit."""
    import tempfile
    return tempfile.mkdtemp(prefix="dcc-", dir="/tmp")

