"""dc_server throughput at 500 and at 50,000 stored sessions, and their ratio.

The C server scans its sessions linearly, so its rate falls with the number stored
(about 200k ops/s at 500 sessions, 5k at 50,000 on a 2-core machine).  Ours should not.
Each figure is a fresh `twistd dc_server` on a unix socket, loaded by bench/loadgen.py
(pipelined, every reply checked); a second set uses one request in flight at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import loadgen  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))


def measure(stored: int, depth: int, connections: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dc.sock")
        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "--pidfile=", "--logfile=/dev/null", "dc_server",
             "--listen", f"UNIX:{path}", "--sessions", str(max(stored * 2, 1000))],
            cwd=tmp)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(path):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("dc_server did not start")
                time.sleep(0.05)
            loadgen.prefill(f"UNIX:{path}", stored)
            return loadgen.run_load(f"UNIX:{path}", processes=1, connections=connections,
                                    depth=depth, seconds=SECONDS, stored=stored)
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    print(f"dc_server, unix socket, {SECONDS:.0f} s per figure, every reply checked")
    for label, depth, conns in (("pipelined (4 connections x 32 deep)", 32, 4),
                                ("one request in flight (1 connection)", 1, 1)):
        small = measure(500, depth, conns)
        large = measure(50000, depth, conns)
        print(f"  {label}:")
        print(f"    500 sessions:    {small:10,.0f} ops/s")
        print(f"    50,000 sessions: {large:10,.0f} ops/s")
        print(f"    ratio 50,000/500: {large / small:.2f}")


if __name__ == "__main__":
    main()
