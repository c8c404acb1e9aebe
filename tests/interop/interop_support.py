"""Helpers for the interop tests: real `twistd -n dcap-door` processes on ports below 32768.

dccp keeps the door port in a signed 16-bit number, so ports from the
ephemeral range (above 32767) cannot be used.  Each door gets its own
state directory in tmp and is stopped at the end of the session.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DCCP = shutil.which("dccp")
#: Options of a door that believes the -uid/-gid of local clients (dccp sends the caller's).
TRUST_LOCAL = ("--trust-client-uid", "127.0.0.0/8")


def free_low_port():
    """A free TCP port in 20000..32000 (dccp cannot reach doors above 32767)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise RuntimeError("no free port below 32768")


class Door:
    """A running door process, its state directory and its log."""

    def __init__(self, tmp, *options):
        self.root = os.path.join(tmp, "root")
        self.pool = None
        for attempt in range(5):
            self.log = os.path.join(tmp, "door-%d.log" % attempt)
            self.port = free_low_port()
            if self._start(tmp, options):
                return
        raise RuntimeError("door did not start: " + self.log_text())

    def _start(self, tmp, options):
        """Run twistd; True once it logs that it listens, False if it exits first."""
        env = dict(os.environ)
        env["PYTHONPATH"] = CHECKOUT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "-l", self.log, "dcap-door", "--listen", "tcp:%d:interface=127.0.0.1" % self.port,
             "--root", self.root, "--no-fsync"] + list(options),
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "DCAP door listening on" not in self.log_text():
            if self.proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("door did not start: " + self.log_text())
            time.sleep(0.05)
        return True

    def url(self, path):
        return "dcap://127.0.0.1:%d%s" % (self.port, path)

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def storage(self):
        """The door's namespace and pool, opened from this process as well."""
        if self.pool is None:
            self.pool = open_pool(self.root, fsync=False)
        return self.pool

    def put(self, path, data, uid=0, gid=0, mode=0o644):
        """Store a file directly (as an import would)."""
        pool = self.storage()
        parent = path.rsplit("/", 1)[0]
        parts = [p for p in parent.split("/") if p]
        for i in range(len(parts)):
            d = "/" + "/".join(parts[:i + 1])
            try:
                pool.namespace.mkdir(d, ROOT, 0o755)
            except Exception:
                pass
        up = pool.open_write(path, ROOT, mode, replace=True)
        up.file.write(data)
        up.commit()

    def entry(self, path):
        return self.storage().namespace.lookup(path, ROOT)

    def read(self, path):
        pool = self.storage()
        with pool.open_read(self.entry(path)) as f:
            return f.read()

    def stop(self):
        if self.pool is not None:
            self.pool.namespace.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_doors = {}  # option tuple -> Door, shared by the whole test session


def dccp(*args, env=None, timeout=120):
    """Run the real dccp; returns (exit code, stdout+stderr text)."""
    full_env = dict(os.environ)
    full_env.pop("DCACHE_CLIENT_ACTIVE", None)
    if env:
        full_env.update(env)
    p = subprocess.run([DCCP] + [str(a) for a in args], env=full_env, capture_output=True,
                       timeout=timeout, text=True, errors="replace")
    return p.returncode, p.stdout + p.stderr
