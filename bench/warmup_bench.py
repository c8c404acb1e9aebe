#!/usr/bin/env python3
"""The first seconds of a fresh dc_server and dc_client: throughput per slice of time.

PyPy's JIT compiles the hot paths while the first requests are served, so a PyPy
server starts slower than it settles; CPython's rate is flat from the first request.
For each runtime a fresh server (``dc_server``, then a fresh ``dc_server`` behind a
fresh ``dc_client``) is started and one CPython load process keeps 32 pipelined GET
requests in flight on one connection for ``--seconds``, counting the replies (each one
compared with the expected bytes) in slices of ``--slice`` seconds.  ``start s`` is the
time from starting the processes to the first right reply (twistd's imports included).

    python3 bench/warmup_bench.py [--seconds S] [--slice S]

PyPy comes from .venv-pypy (``make install PYTHON=pypy3``), or pypy3 on PATH; without
either, CPython's row alone is printed.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from per_op_bench import REPLY, REQUEST, Servers, find_pypy  # noqa: E402

DEPTH = 32


def rates(path: str, seconds: float, width: float) -> List[float]:
    """Replies per second in each slice of ``width`` seconds from the first request on."""
    batch, expected = REQUEST * DEPTH, REPLY * DEPTH
    counts = [0] * int(round(seconds / width))
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(30)
        start = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            s.sendall(batch)
            got = bytearray()
            while len(got) < len(expected):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                got += chunk
            if got != expected:
                raise SystemExit("wrong reply")
            index = int((time.perf_counter() - start) / width)
            if index < len(counts):
                counts[index] += DEPTH
    return [c / width for c in counts]


def curve(python: str, through_client: bool, seconds: float,
          width: float) -> Tuple[float, List[float]]:
    """(seconds from start to the first right reply, the rates) of a fresh server."""
    servers = Servers(python)
    try:
        started = time.perf_counter()
        path = servers.dc_server()  # stores one session with one ADD and one GET
        if through_client:
            path = servers.dc_client(path)
        return time.perf_counter() - started, rates(path, seconds, width)
    finally:
        servers.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slice", type=float, default=0.5)
    parser.add_argument("--python", default=sys.executable, help="the CPython for the servers")
    args = parser.parse_args(argv)
    runtimes = {"CPython": args.python}
    pypy = find_pypy()
    if pypy is None:
        print("no .venv-pypy/bin/python and no pypy3 on PATH: CPython only")
    else:
        runtimes["PyPy"] = pypy

    slices = int(round(args.seconds / args.slice))
    header = " ".join(f"{(i + 1) * args.slice:>6g}" for i in range(slices))
    print(f"ops/s in each {args.slice:g} s slice after the first request "
          f"(32 in flight on one connection); columns end at the second shown")
    print(f"{'runtime':<8} {'server':<10} {'start s':>7} {header}")
    for name, python in runtimes.items():
        for label, through_client in (("dc_server", False), ("dc_client", True)):
            startup, row = curve(python, through_client, args.seconds, args.slice)
            print(f"{name:<8} {label:<10} {startup:>7.2f} "
                  + " ".join(f"{r / 1000:>5.1f}k" for r in row))


if __name__ == "__main__":
    main()
