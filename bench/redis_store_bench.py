"""dc_server on a Redis store against the local store, and two dc_servers sharing one Redis.

Each figure is a fresh `twistd dc_server` on a unix socket, loaded by bench/loadgen.py
(60% GET, 20% HAVE, 10% ADD, 10% REMOVE over 500 stored sessions, every reply checked),
with 32 requests in flight on one connection and with one.  Redis is a `redis-server`
started here on a free loopback port, persistence off.  The shared figure runs one load
process against each of two dc_servers in front of the same Redis.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import loadgen  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
STORED = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(tmp: str):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}"
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("redis-server did not start")
        time.sleep(0.05)


def start_dc_server(tmp: str, name: str, store: str):
    path = os.path.join(tmp, name)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "--nodaemon", "--pidfile=", "--logfile=/dev/null", "dc_server",
         "--listen", f"UNIX:{path}", "--sessions", "1000000", "--store", store], cwd=tmp)
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("dc_server did not start")
        time.sleep(0.05)
    return proc, f"UNIX:{path}"


def flush(store: str) -> None:
    """Empty the Redis between figures: the load adds the same fresh ids each run."""
    if store.startswith("redis://"):
        port = store.rsplit(":", 1)[1]
        subprocess.run(["redis-cli", "-p", port, "FLUSHALL"], check=True,
                       stdout=subprocess.DEVNULL)


def stop(*procs) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def measure(store: str, depth: int) -> float:
    flush(store)
    with tempfile.TemporaryDirectory() as tmp:
        server, addr = start_dc_server(tmp, "dc.sock", store)
        try:
            loadgen.prefill(addr, STORED)
            return loadgen.run_load(addr, processes=1, connections=1, depth=depth,
                                    seconds=SECONDS, stored=STORED)
        finally:
            stop(server)


def measure_shared(store: str, depth: int) -> float:
    """Two dc_servers on one store, one load process on each."""
    flush(store)
    with tempfile.TemporaryDirectory() as tmp:
        first, a = start_dc_server(tmp, "a.sock", store)
        second, b = start_dc_server(tmp, "b.sock", store)
        try:
            loadgen.prefill(a, STORED)   # stored through one, read through both
            results = multiprocessing.Queue()
            procs = [multiprocessing.Process(target=loadgen.worker, args=(
                addr, 1, depth, SECONDS, STORED, seed, results))
                for seed, addr in ((1, a), (2, b))]
            started = time.perf_counter()
            for p in procs:
                p.start()
            total = sum(results.get(timeout=SECONDS + 60) for _ in procs)
            for p in procs:
                p.join(10)
                if p.exitcode:
                    raise SystemExit(f"a load worker failed (exit {p.exitcode})")
            return total / (time.perf_counter() - started)
        finally:
            stop(first, second)


def main() -> None:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        redis, url = start_redis(tmp)
        try:
            print(f"dc_server, unix socket, {SECONDS:.0f} s per figure, every reply checked")
            for label, depth in (("32 in flight (1 connection)", 32),
                                 ("one in flight (1 connection)", 1)):
                local = measure("local", depth)
                on_redis = measure(url, depth)
                shared = measure_shared(url, depth)
                print(f"  {label}:")
                print(f"    local store:                  {local:10,.0f} ops/s")
                print(f"    Redis store:                  {on_redis:10,.0f} ops/s"
                      f"  ({on_redis / local:.2f} of local)")
                print(f"    two dc_servers, one Redis:    {shared:10,.0f} ops/s"
                      f"  ({shared / on_redis:.2f} of one)")
        finally:
            stop(redis)


if __name__ == "__main__":
    main()
