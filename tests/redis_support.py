"""Real Redis servers for the tests: a standalone one and a three-node Cluster.

Each runs Debian's ``redis-server`` in a temporary directory on free loopback ports, with
persistence off (``--save '' --appendonly no``); the system service is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

import pytest

from cache_support import free_tcp_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None or REDIS_CLI is None,
    reason="redis-server and redis-cli are not installed (apt-get install -y redis-server)")

HAVE_REDIS_PY = importlib.util.find_spec("redis") is not None

needs_redis_py = pytest.mark.skipif(
    not HAVE_REDIS_PY, reason="redis-py is not installed (pip install 'distcache-twisted[redis]')")


def cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout)
    return done.stdout.strip()


class RedisServer:
    """One ``redis-server`` process; ``stop`` kills it, ``start`` brings it back on its port."""

    def __init__(self, directory: str, port: Optional[int] = None, cluster: bool = False):
        self.directory = directory
        self.port = port or free_tcp_port()
        self.cluster = cluster
        # The bus port is named, or Redis takes port + 10000, which may be taken or too high.
        self.bus_port = free_tcp_port() if cluster else None
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> "RedisServer":
        os.makedirs(self.directory, exist_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.directory,
                "--daemonize", "no", "--logfile", "redis.log"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-port", str(self.bus_port),
                     "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while cli(self.port, "PING") != "PONG":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def flush(self) -> None:
        cli(self.port, "FLUSHALL")
        cli(self.port, "SCRIPT", "FLUSH")


class RedisClusterNodes:
    """Three cluster-enabled ``redis-server`` processes joined with ``redis-cli --cluster create``."""

    def __init__(self, directory: str):
        self.nodes: List[RedisServer] = [
            RedisServer(os.path.join(directory, f"node{i}"), cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> "RedisClusterNodes":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout}{out.stderr}")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [cli(n.port, "CLUSTER", "INFO") for n in self.nodes if n.process]
            if all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()


def redis_dir() -> str:
    return tempfile.mkdtemp(prefix="dc-redis-")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
