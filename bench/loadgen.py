"""A distcache load generator: pipelined, many connections, every reply checked.

Worker processes each drive several connections with plain sockets: they send a window of
requests on every connection, then read and check every reply (GET data, HAVE and
REMOVE results, ADD results).  A wrong reply stops the run with an error.

    python bench/loadgen.py --connect UNIX:/tmp/dc.sock --prefill 500 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from distcache import address, wire  # noqa: E402


def open_socket(addr_text: str) -> socket.socket:
    addr = address.parse(addr_text)
    if addr.kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(addr.path)
    else:
        s = socket.create_connection((addr.host or "127.0.0.1", addr.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(30)
    return s


def session(i: int) -> tuple:
    sid = b"bench-session-%010d" % i
    return sid, (sid * 8)[:120]


def prefill(addr_text: str, count: int) -> None:
    """Store ``count`` known sessions (ids 0..count-1) for the workers to read."""
    s = open_socket(addr_text)
    decoder = wire.Decoder(expect=True)
    for start in range(0, count, 500):
        stop = min(count, start + 500)
        batch = []
        for i in range(start, stop):
            sid, data = session(i)
            batch.append(wire.encode_request(i, wire.OP_ADD,
                                             wire.encode_add_payload(sid, data, 3600000)))
        s.sendall(b"".join(batch))
        got = []
        while len(got) < stop - start:
            got += decoder.feed(s.recv(1 << 20))
        bad = [m for m in got if m.payload not in (b"\x00", b"\x65")]
        if bad:
            raise SystemExit(f"prefill: unexpected ADD reply {bad[0].payload!r}")
    s.close()


def worker(addr_text, connections, depth, seconds, stored, seed, results):
    rng = random.Random(seed)
    socks = [open_socket(addr_text) for _ in range(connections)]
    decoders = [wire.Decoder(expect=True) for _ in socks]
    ops = 0
    uid = 0
    fresh = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        expected = []
        for s in socks:
            reqs = []
            want = []
            for _ in range(depth):
                uid = (uid + 1) & 0xFFFFFFFF
                roll = rng.random()
                if roll < 0.6:
                    sid, data = session(rng.randrange(stored))
                    reqs.append(wire.encode_request(uid, wire.OP_GET, sid))
                    want.append((uid, data))
                elif roll < 0.8:
                    sid, _ = session(rng.randrange(stored))
                    reqs.append(wire.encode_request(uid, wire.OP_HAVE, sid))
                    want.append((uid, b"\x00"))
                elif roll < 0.9:
                    fresh += 1
                    sid = b"fresh-%d-%d" % (seed, fresh)
                    reqs.append(wire.encode_request(
                        uid, wire.OP_ADD, wire.encode_add_payload(sid, sid, 60000)))
                    want.append((uid, b"\x00"))
                else:
                    sid = b"fresh-%d-%d" % (seed, fresh)
                    reqs.append(wire.encode_request(uid, wire.OP_REMOVE, sid))
                    want.append((uid, None))  # 0 or 1: eviction may have taken it
            s.sendall(b"".join(reqs))
            expected.append(want)
        for s, decoder, want in zip(socks, decoders, expected):
            got = []
            while len(got) < len(want):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise SystemExit("server closed the connection")
                got += decoder.feed(chunk)
            for m, (u, payload) in zip(got, want):
                if m.uid != u or (payload is not None and m.payload != payload) or (
                        payload is None and m.payload not in (b"\x00", b"\x01")):
                    raise SystemExit(f"wrong reply uid={m.uid} payload={m.payload[:20]!r}, "
                                     f"expected uid={u} payload={(payload or b'')[:20]!r}")
            ops += len(want)
    for s in socks:
        s.close()
    results.put(ops)


def run_load(addr_text: str, processes: int = 1, connections: int = 4, depth: int = 32,
             seconds: float = 3.0, stored: int = 500) -> float:
    """Run the load and return operations per second (every reply checked)."""
    results = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(
        addr_text, connections, depth, seconds, stored, n + 1, results))
        for n in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    total = 0
    for _ in procs:
        total += results.get(timeout=seconds + 60)
    for p in procs:
        p.join(timeout=10)
        if p.exitcode:
            raise SystemExit(f"a load worker failed (exit {p.exitcode})")
    return total / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", required=True)
    parser.add_argument("--prefill", type=int, default=500)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    prefill(args.connect, args.prefill)
    rate = run_load(args.connect, args.processes, args.connections, args.depth, args.seconds,
                    args.prefill)
    print(f"{rate:,.0f} ops/s  ({args.processes} processes x {args.connections} connections, "
          f"depth {args.depth}, {args.prefill} stored sessions, every reply checked)")


if __name__ == "__main__":
    main()
