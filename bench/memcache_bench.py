"""dc_server's memcache listener against Debian's memcached on the same load.

The load is a session cache's: Apache-style keys (``mod_ssl-sess:`` and 64 hex digits,
77 bytes, so dc_server stores them under its mapped 64-byte ids) with 1,500-byte
values, one set for every nine gets over 2,000 keys, every reply checked.  It runs
once with one request in flight and once pipelined (64 requests written before their
replies are read), each for BENCH_SECONDS on one connection, against a fresh
``memcached -t 1`` and a fresh ``twistd dc_server --memcache-listen`` on loopback TCP,
and prints both rates and their ratio from that one run.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
KEYS = 2000
VALUE = 1500
DEPTH = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server on port {port} did not start")
            time.sleep(0.05)


class Client:
    """A blocking memcache client that reads and checks replies in order."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise SystemExit("the server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            self._fill()

    def read_reply(self, op: str, value: bytes) -> None:
        line = self._line()
        if op == "set":
            if line != b"STORED":
                raise SystemExit(f"set answered {line!r}")
            return
        if line.startswith(b"VALUE "):
            size = int(line.split()[3])
            while len(self.buf) < size + 2:
                self._fill()
            if bytes(self.buf[:size]) != value:
                raise SystemExit("get returned other data")
            del self.buf[:size + 2]
            line = self._line()
        if line != b"END":
            raise SystemExit(f"get answered {line!r}")


def requests(rng: random.Random, keys, values):
    """An endless set/get mix: (op, bytes to send, value expected)."""
    while True:
        i = rng.randrange(KEYS)
        key, value = keys[i], values[i]
        if rng.random() < 0.1:
            yield "set", b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), value
        else:
            yield "get", b"get %s\r\n" % key, value


def run_load(port: int, depth: int) -> float:
    rng = random.Random(7)
    keys = [b"mod_ssl-sess:%064X" % rng.getrandbits(256) for _ in range(KEYS)]
    values = [bytes([65 + i % 26]) * VALUE for i in range(KEYS)]
    client = Client(port)
    for key, value in zip(keys, values):  # every key present: each get is a hit
        client.sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
        client.read_reply("set", value)
    mix = requests(rng, keys, values)
    done = 0
    started = time.perf_counter()
    stop = started + SECONDS
    while time.perf_counter() < stop:
        batch = [next(mix) for _ in range(depth)]
        client.sock.sendall(b"".join(data for _, data, _ in batch))
        for op, _, value in batch:
            client.read_reply(op, value)
        done += depth
    elapsed = time.perf_counter() - started
    client.sock.close()
    return done / elapsed


def measure(argv, port: int, depth: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(argv(port, tmp), cwd=tmp, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, process)
            return run_load(port, depth)
        finally:
            process.terminate()
            process.wait(20)


def memcached(port: int, tmp: str):
    return ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1", "-m", "256",
            "-u", "nobody"]


def dc_server(port: int, tmp: str):
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "--logfile=/dev/null", "dc_server",
            "--listen", f"UNIX:{tmp}/dc.sock", "--sessions", str(KEYS * 2),
            "--memcache-listen", f"IP:127.0.0.1:{port}"]


def main() -> None:
    if shutil.which("memcached") is None:
        raise SystemExit("memcached is not installed (Debian: apt-get install memcached)")
    print(f"memcache set/get 1:9, {KEYS} keys of 77 bytes, {VALUE}-byte values, "
          f"{SECONDS:g} s each, one connection")
    for label, depth in (("one in flight", 1), (f"pipelined {DEPTH}", DEPTH)):
        theirs = measure(memcached, free_port(), depth)
        ours = measure(dc_server, free_port(), depth)
        print(f"{label:>14}: memcached {theirs:9.0f} ops/s   dc_server {ours:9.0f} ops/s   "
              f"ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
