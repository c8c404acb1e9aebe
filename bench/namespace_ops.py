#!/usr/bin/env python3
"""Namespace operations per second on SQLite and on PostgreSQL.

Creates N files (a write ticket and its commit, as an upload does), stats
each of them, then unlinks them, in /bench/run/d<k>/ (three levels deep),
on the embedded SQLite engine and on a PostgreSQL cluster started for the
run (Debian's server binaries, loopback, fsync off like the SQLite file's
``synchronous=NORMAL`` without a crash guarantee).  One caller at a time,
as the door's single database worker calls the engine.

    python3 bench/namespace_ops.py [--files N]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from distcache.dcap.namespace import ROOT as SUPERUSER  # noqa: E402
from distcache.dcap.sqlite_namespace import SQLiteNamespace  # noqa: E402


def run(ns, files):
    ns.mkdir("/bench", SUPERUSER)
    ns.mkdir("/bench/run", SUPERUSER)
    dirs = ["/bench/run/d%d" % k for k in range(10)]
    for d in dirs:
        ns.mkdir(d, SUPERUSER)
    paths = ["%s/f%06d" % (dirs[i % len(dirs)], i) for i in range(files)]
    rates = {}

    start = time.perf_counter()
    for p in paths:
        ticket = ns.prepare_write(p, SUPERUSER)
        ns.commit_write(ticket, 1, 1, "pool1", lambda pnfsid: None)
    rates["create"] = files / (time.perf_counter() - start)

    start = time.perf_counter()
    for p in paths:
        ns.lookup(p, SUPERUSER)
    rates["stat"] = files / (time.perf_counter() - start)

    start = time.perf_counter()
    for p in paths:
        ns.unlink(p, SUPERUSER)
    rates["unlink"] = files / (time.perf_counter() - start)
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    results = {}
    directory = tempfile.mkdtemp(prefix="ns-bench-")
    try:
        ns = SQLiteNamespace(directory)
        results["sqlite"] = run(ns, args.files)
        ns.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    import pg_support
    reason = pg_support.missing_reason()
    if reason:
        print("PostgreSQL skipped: %s" % reason)
    else:
        from distcache.dcap.postgres_namespace import PostgresNamespace
        server = pg_support.PostgresServer().start()
        try:
            ns = PostgresNamespace(server.fresh_database())
            results["postgresql"] = run(ns, args.files)
            ns.close()
        finally:
            server.stop()

    print("%d files, ops/s (one caller, depth-3 paths)" % args.files)
    print("%-12s %10s %10s %10s" % ("engine", "create", "stat", "unlink"))
    for engine, rates in results.items():
        print("%-12s %10.0f %10.0f %10.0f" % (engine, rates["create"], rates["stat"], rates["unlink"]))
    if len(results) == 2:
        s, p = results["sqlite"], results["postgresql"]
        print("%-12s %10.2f %10.2f %10.2f" % ("pg/sqlite", p["create"] / s["create"],
                                              p["stat"] / s["stat"], p["unlink"] / s["unlink"]))


if __name__ == "__main__":
    main()
