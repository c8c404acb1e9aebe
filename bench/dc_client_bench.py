#!/usr/bin/env python3
"""Throughput through dc_client beside the same load on dc_server directly.

Starts ``twistd dc_server`` on a unix socket and ``twistd dc_client`` in front of it,
then runs each load against both and prints ops/s and the ratio:

- one dc_test, a new connection per operation (how most applications use dc_client);
- one dc_test over a persistent connection;
- four dc_test processes at once, persistent;
- a pipelined load: Twisted clients keeping many requests in flight per connection.

dc_test checks every answer, so a wrong answer stops the benchmark.  Everything runs on
unix sockets in a private directory, stops by itself, and is killed on the way out.

    python3 bench/dc_client_bench.py [--ops N] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distcache.blocking import SessionCache  # noqa: E402
from distcache.replies import CacheError  # noqa: E402

TWISTD = "from twisted.scripts.twistd import run; run()"
RATE = re.compile(r"operations in ([0-9.]+) s: ([0-9]+) ops/s")


def child_env():
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + extra))


def twistd(plugin: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile=", "--logfile=/dev/null",
         plugin, *args],
        env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_cache(where: str, path: str, deadline: float = 15.0) -> None:
    """Until ``where`` answers a real reply (dc_client answers empty until it is linked)."""
    stop = time.monotonic() + deadline
    while True:
        if os.path.exists(path):
            try:
                SessionCache(where, timeout=2).has(b"are-you-there")
                return
            except CacheError:
                pass
        if time.monotonic() > stop:
            raise SystemExit(f"{where} did not come up")
        time.sleep(0.05)


def dc_test(where: str, ops: int, persistent: bool) -> subprocess.Popen:
    # No -seed: every run needs sessions of its own, as earlier runs' stay cached.
    args = [sys.executable, "-m", "distcache.loadtest", "-connect", where, "-ops", str(ops),
            "-sessions", "10"]
    if persistent:
        args.append("-persistent")
    return subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> float:
    out, err = process.communicate(timeout=300)
    if process.returncode != 0:
        raise SystemExit(f"dc_test failed:\n{out}{err}")
    match = RATE.search(out)
    return int(match.group(2))


def dc_test_rate(where: str, ops: int, persistent: bool, parallel: int = 1) -> float:
    """Aggregate ops/s of ``parallel`` dc_test processes started together."""
    processes = [dc_test(where, ops, persistent) for _ in range(parallel)]
    return sum(finish(p) for p in processes)


def pipelined_rate(where: str, connections: int, depth: int, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--pipelined-worker", where,
         str(connections), str(depth), str(seconds)],
        env=child_env(), capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise SystemExit(f"pipelined load failed:\n{out.stdout}{out.stderr}")
    return float(out.stdout.split()[-1])


def pipelined_worker(where: str, connections: int, depth: int, seconds: float) -> None:
    """Keep ``depth`` GET/HAVE requests in flight on each connection; check every answer."""
    from twisted.internet import defer, task

    from distcache.client import connect

    run = os.urandom(4).hex().encode()
    sessions = {b"pipelined-%s-%03d" % (run, i): os.urandom(200 + i) for i in range(100)}
    ids = list(sessions)
    done = [0]

    @defer.inlineCallbacks
    def lane(cache, stop_at, reactor, start):
        i = start
        while reactor.seconds() < stop_at:
            sid = ids[i % len(ids)]
            if i % 2:
                ok = (yield cache.get(sid)) == sessions[sid]
            else:
                ok = (yield cache.has(sid)) is True
            if not ok:
                raise SystemExit(f"wrong answer for {sid!r}")
            i += 7
            done[0] += 1

    @defer.inlineCallbacks
    def main(reactor):
        caches = yield defer.gatherResults([connect(reactor, where) for _ in range(connections)])
        for sid, data in sessions.items():
            if not (yield caches[0].add(sid, data, 600000)):
                raise SystemExit(f"could not store {sid!r}")
        stop_at = reactor.seconds() + seconds
        started = reactor.seconds()
        yield defer.gatherResults([lane(c, stop_at, reactor, n)
                                   for c in caches for n in range(depth)])
        elapsed = reactor.seconds() - started
        for cache in caches:
            cache.close()
        print(f"{done[0]} operations, ops/s {done[0] / elapsed:.0f}")

    task.react(main)


def ratio_line(label: str, direct: float, proxied: float) -> str:
    return (f"{label:<44} {direct:>9.0f} {proxied:>11.0f} "
            f"{proxied / direct if direct else 0:>8.2f}")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20000, help="operations per dc_test run")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of pipelined runs")
    parser.add_argument("--pipelined-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pipelined_worker:
        where, conns, depth, seconds = args.pipelined_worker
        pipelined_worker(where, int(conns), int(depth), float(seconds))
        return 0

    directory = tempfile.mkdtemp(prefix="dcbench-", dir="/tmp")
    server_path = os.path.join(directory, "server")
    local_path = os.path.join(directory, "local")
    direct, proxied = f"UNIX:{server_path}", f"UNIX:{local_path}"
    started: List[subprocess.Popen] = []
    try:
        started.append(twistd("dc_server", "--listen", direct, "--sessions", "1000"))
        wait_for_cache(direct, server_path)
        started.append(twistd("dc_client", "--listen", proxied, "--server", direct,
                              "--retry", "200"))
        wait_for_cache(proxied, local_path)
        print(f"dc_server and dc_client on unix sockets; dc_test runs of {args.ops} operations, "
              f"pipelined runs of {args.seconds:g} s; {os.cpu_count()} CPUs")
        print(f"{'load':<44} {'direct':>9} {'dc_client':>11} {'ratio':>8}")
        print(f"{'':<44} {'ops/s':>9} {'ops/s':>11}")
        loads = [
            ("dc_test, connection per operation", lambda w: dc_test_rate(w, args.ops, False)),
            ("dc_test -persistent", lambda w: dc_test_rate(w, args.ops, True)),
            ("4 x dc_test -persistent, at once", lambda w: dc_test_rate(w, args.ops, True, 4)),
            ("pipelined: 1 connection x 16 in flight",
             lambda w: pipelined_rate(w, 1, 16, args.seconds)),
            ("pipelined: 8 connections x 16 in flight",
             lambda w: pipelined_rate(w, 8, 16, args.seconds)),
        ]
        for label, load in loads:
            print(ratio_line(label, load(direct), load(proxied)), flush=True)
    finally:
        for process in started:
            process.kill()
            process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
