"""Processes under abuse: twistd children with a log file, their memory, and probes.

A probe is one correct request on a listener and the check of its answer: what
"still alive" means here.  Memory is the child's resident set from
/proc/PID/status; log lines are counted in the child's own log file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import List, Optional

from distcache import wire
from distcache.blocking import SessionCache

from cache_support import repo_env, wait_until_connectable
from netutil import free_port


def rss_bound(kib: int) -> int:
    """A bound on RSS growth for the runtime the servers run on.

    PyPy's JIT compiles the new code paths a load exercises, and its GC grows its
    nursery with the load: a one-off growth of a few tens of MiB that stops there,
    so its bounds are three times CPython's.
    """
    return kib * 3 if sys.implementation.name == "pypy" else kib


def rss_kib(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


class Twistd:
    """``twistd -n PLUGIN ARGS`` with its log in ``log``; started once its TCP ports answer."""

    def __init__(self, directory: str, plugin: str, args: List[str], ports: List[int]):
        self.directory = directory
        self.plugin = plugin
        self.args = list(args)
        self.ports = list(ports)
        self.log = os.path.join(directory, "%s.log" % plugin)
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "Twistd":
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "-l", self.log, self.plugin] + self.args,
            cwd=self.directory, env=repo_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        for port in self.ports:
            wait_until_connectable(socket.AF_INET, ("127.0.0.1", port), deadline=30)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> int:
        return rss_kib(self.pid)

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log)
        except OSError:
            return 0

    def count(self, text: str) -> int:
        return self.log_text().count(text)

    def kill(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def ports(n: int) -> List[int]:
    """n distinct free loopback ports."""
    chosen: List[int] = []
    while len(chosen) < n:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    return chosen


# -- probes: one correct request each, True when the answer is right ---------------------

def distcache_roundtrip(port: int, session_id: bytes, data: bytes) -> bool:
    """ADD then GET of a session through a distcache listener."""
    with SessionCache("IP:127.0.0.1:%d" % port, timeout=10.0) as cache:
        status = cache.add_status(session_id, data, 600000)
        if status not in (wire.OK, wire.ERR_MATCHING_SESSION):
            return False
        return cache.get(session_id) == data


def distcache_get(port: int, session_id: bytes) -> Optional[bytes]:
    with SessionCache("IP:127.0.0.1:%d" % port, timeout=10.0) as cache:
        return cache.get(session_id)


def memcache_exchange(port: int, request: bytes, until: bytes, timeout: float = 10.0) -> bytes:
    """Send a memcached text request and read until the reply ends with ``until``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        got = b""
        while not got.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def memcache_roundtrip(port: int, key: bytes, value: bytes) -> bool:
    stored = memcache_exchange(port, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value),
                               b"\r\n")
    if stored != b"STORED\r\n":
        return False
    return memcache_get(port, key) == value


def memcache_get(port: int, key: bytes) -> Optional[bytes]:
    got = memcache_exchange(port, b"get %s\r\n" % key, b"END\r\n")
    if got == b"END\r\n":
        return None
    header, _, rest = got.partition(b"\r\n")
    length = int(header.split()[3])
    return rest[:length]


def metrics_ok(port: int) -> bool:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as reply:
        return reply.status == 200 and b"# TYPE" in reply.read()


def door_hello_ok(port: int) -> bool:
    """A DCAP hello on the door's control port is welcomed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n')
        got = b""
        while not got.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got == b"0 0 server welcome 2 47\n"


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Reads until the peer closes (True) or ``timeout`` passes (False)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def timed(call, *args):
    """(result, seconds) of call(*args)."""
    started = time.monotonic()
    result = call(*args)
    return result, time.monotonic() - started
