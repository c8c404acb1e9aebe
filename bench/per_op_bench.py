#!/usr/bin/env python3
"""Per-operation costs: dc_server and dc_client beside the floor of their reactor and runtime.

For each server runtime (CPython, and PyPy with ``--pypy``), three servers are started on
unix sockets, one after another:

- ``bare``: a Twisted server with no distcache code at all, which answers every request
  (all requests are the same size) with the right reply bytes: the floor of the reactor
  and the runtime;
- ``dc_server``: ours;
- ``dc_client``: ours, in front of that dc_server (two hops).

and each is driven by raw-socket load processes for three loads:

- ``conn/op``: a new connection per operation (how mod_socache_dc and most C users call
  dc_client), many connections under way at once;
- ``1 in flight``: one persistent connection, one request at a time (latency bound);
- ``1 in fl, 1 core``: the same with the servers and the load on one core, where the
  latency is the CPU work along the path and not where the scheduler put each process;
- ``32 in flight``: pipelined, 32 requests in flight on each of several connections.

The load comes from ``bench/perop_load.c``, compiled on first use with ``cc -O2`` into
``bench/.build/``: forked processes, each driving many connections from one poll loop,
far cheaper per request than the servers, so that the servers set the figures (a Python
load process spends about as long per request as the server it drives).  Without a C
compiler (or with ``--load python``) Python worker processes make the load instead, and
the header says so.

Every reply is compared with the expected bytes.  The table gives ops/s, p50 and p99
latency, and ratios measured within the same run (the machine's cores are shared, so
absolute figures swing between runs; ratios are what to compare).  Beside them: the CPU
time the servers on the path spend per operation (dc_client's row counts dc_client and
its dc_server; ``/ bare`` is that cost over the bare server's), which swings far less
than ops/s on a shared machine, and how busy the front server was: near 100 % it was
saturated, well below it the load generator (or the machine) capped the figure.
``kernel %`` is the share of that CPU time spent in the kernel (system calls, wake-ups):
no runtime shortens it, so with PyPy the comparison with CPython prints, beside each
ratio, the most a runtime could gain on that row (100 / CPython's kernel %).
``wait %`` tells the two apart: the share of the run the front server was ready to run
but waited for a core (the kernel's run-queue time); busy plus wait near 100 % means the
server always had work, and the machine's other processes, not the load, held it back.
With a connection per operation the load keeps 32 connections under way, so its p50 and
p99 are the latency of a saturated server with that queue, not of an idle one.  At the
end it measures what one stored session costs in dc_server's memory beyond its id and
data (RSS growth over 50,000 sessions of 200 bytes).

    python3 bench/per_op_bench.py [--seconds S] [--pypy] [--load c|python]
"""

from __future__ import annotations

import argparse
import array
import hashlib
import multiprocessing
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distcache import wire  # noqa: E402

TWISTD = "from twisted.scripts.twistd import run; run()"
SESSION_ID = b"per-op-bench-session-0001"
SESSION_DATA = bytes(range(256)) * 2  # 512 bytes, a typical DER session
REQUEST = wire.encode_request(1, wire.OP_GET, SESSION_ID)
REPLY = wire.encode_response(1, wire.OP_GET, SESSION_DATA)

BARE_SERVER = r'''
import sys
from twisted.internet import reactor, protocol
request_size, reply = int(sys.argv[2]), bytes.fromhex(sys.argv[3])

class Bare(protocol.Protocol):
    buffered = 0
    def dataReceived(self, data):
        total = self.buffered + len(data)
        count, self.buffered = divmod(total, request_size)
        if count:
            self.transport.write(reply * count)

factory = protocol.Factory.forProtocol(Bare)
factory.noisy = False
reactor.listenUNIX(sys.argv[1], factory, backlog=4096)
reactor.run()
'''


def child_env() -> Dict[str, str]:
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + extra))


def wait_for_socket(path: str, process: subprocess.Popen, deadline: float = 30.0) -> None:
    stop = time.monotonic() + deadline
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server for {path} exited with {process.returncode}")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            return
        except OSError:
            if time.monotonic() > stop:
                raise SystemExit(f"{path} did not come up")
            time.sleep(0.05)
        finally:
            probe.close()


def exchange(sock: socket.socket, request: bytes, reply_size: int) -> bytes:
    sock.sendall(request)
    got = bytearray()
    while len(got) < reply_size:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("the server closed the connection")
        got += chunk
    return bytes(got)


def store_session(path: str) -> None:
    """Put the benchmark's one session in (through whatever listens on ``path``)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.settimeout(10)
        add = wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(
            SESSION_ID, SESSION_DATA, 3600000))
        reply = exchange(s, add, len(wire.encode_response(1, wire.OP_ADD, b"\x00")))
        if reply[-1:] not in (b"\x00", b"\x65"):
            raise SystemExit(f"storing the benchmark session failed: {reply!r}")
        if exchange(s, REQUEST, len(REPLY)) != REPLY:
            raise SystemExit("the server does not return the stored session")


# Load workers (plain CPython processes, cheaper per request than the servers) ----------

def _conn_per_op(path, seconds, out):
    latencies, deadline = [], time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        if start > deadline:
            break
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            if exchange(s, REQUEST, len(REPLY)) != REPLY:
                raise SystemExit("wrong reply")
        latencies.append(time.perf_counter() - start)
    out.put(latencies)


def _in_flight(path, seconds, depth, connections, out):
    socks = []
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        socks.append(s)
    batch, expected = REQUEST * depth, REPLY * depth
    latencies, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for s in socks:
            s.sendall(batch)
        for s in socks:
            got = bytearray()
            while len(got) < len(expected):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise SystemExit("the server closed the connection")
                got += chunk
            if got != expected:
                raise SystemExit("wrong reply")
        took = time.perf_counter() - start
        latencies.extend([took] * (depth * connections))
    for s in socks:
        s.close()
    out.put(latencies)


PYTHON_LOADS = {
    "conn/op": dict(processes=4, target=_conn_per_op, args=()),
    "1 in flight": dict(processes=1, target=_in_flight, args=(1, 1)),
    "1 in fl, 1 core": dict(processes=1, target=_in_flight, args=(1, 1)),
    "32 in flight": dict(processes=2, target=_in_flight, args=(32, 2)),
}


def python_latencies(path: str, load: str, seconds: float) -> List[float]:
    """Latencies in seconds of one load made by Python worker processes."""
    spec = PYTHON_LOADS[load]
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=spec["target"],
                                     args=(path, seconds, *spec["args"], out))
             for _ in range(spec["processes"])]
    for p in procs:
        p.start()
    latencies: List[float] = []
    for _ in procs:
        latencies += out.get(timeout=seconds + 120)
    for p in procs:
        p.join(10)
        if p.exitcode:
            raise SystemExit(f"a {load} worker failed against {path}")
    return latencies


# The C load generator ------------------------------------------------------------------

C_SOURCE = ROOT / "bench" / "perop_load.c"
C_BUILD = ROOT / "bench" / ".build"

# Forked processes, connections per process, requests in flight per connection.  The
# machine's two cores are shared by the load and the servers (two of them behind
# dc_client), so few processes with many connections each: one keeps a server saturated
# with about a third of a core.  conn/op keeps 32 connections under way, fewer than a
# Twisted listener's default backlog of 50.  32 in flight spreads over 8 connections
# (with 4, a PyPy server sat idle a quarter of the time) in two processes (one process
# left the cheapest servers idle a little more often: reading and checking a batch of
# replies and answering one of requests alternate less).  ``1 in flight`` is one
# connection, one request: latency bound by definition.
C_LOADS = {
    "conn/op": dict(mode="conn", processes=1, connections=32, depth=1),
    "1 in flight": dict(mode="pipe", processes=1, connections=1, depth=1),
    "1 in fl, 1 core": dict(mode="pipe", processes=1, connections=1, depth=1),
    "32 in flight": dict(mode="pipe", processes=2, connections=4, depth=32),
}

# Loads run with the servers on the path and the load generator all on one core.  With
# one request in flight every hop wakes a sleeping process; on this machine's virtual
# cores a wake-up on the other core costs about 20 µs more than one on the same core, and
# where the scheduler puts each process changes from run to run, so the row jumps between
# two figures.  On one core the latency is the CPU work along the path, nothing else.
ONE_CORE = {"1 in fl, 1 core"}

LOADS = list(C_LOADS)
assert LOADS == list(PYTHON_LOADS)


def c_compiler() -> List[str]:
    """$CC, or cc (gcc) from PATH; empty without one."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    return cc if cc[0] and shutil.which(cc[0]) else []


def build_c_load(cc: List[str]) -> Path:
    """The load generator compiled by ``cc``, built once per version of its source."""
    digest = hashlib.sha256(C_SOURCE.read_bytes()).hexdigest()[:16]
    binary = C_BUILD / f"perop_load-{digest}"
    if not binary.exists():
        C_BUILD.mkdir(exist_ok=True)
        for stale in C_BUILD.glob("perop_load-*"):  # built from an earlier source
            stale.unlink()
        partial = C_BUILD / f".perop_load-{digest}.{os.getpid()}"
        built = subprocess.run([*cc, "-O2", "-o", str(partial), str(C_SOURCE)],
                               capture_output=True, text=True)
        if built.returncode:
            raise SystemExit(f"{' '.join(cc)} could not build {C_SOURCE}:\n{built.stderr}")
        os.replace(partial, binary)
    return binary


def c_latencies(binary: Path, path: str, load: str, seconds: float) -> List[float]:
    """Latencies in seconds of one load made by the C load generator."""
    spec = C_LOADS[load]
    with tempfile.TemporaryDirectory(prefix="perop-load-") as scratch:
        out = os.path.join(scratch, "latencies")
        run = subprocess.run(
            [str(binary), "-p", path, "-m", spec["mode"], "-s", repr(seconds),
             "-P", str(spec["processes"]), "-c", str(spec["connections"]),
             "-d", str(spec["depth"]), "-q", REQUEST.hex(), "-r", REPLY.hex(), "-o", out],
            capture_output=True, text=True, timeout=seconds + 120)
        if run.returncode:
            raise SystemExit(f"the {load} load against {path} failed:\n{run.stderr.strip()}")
        nanoseconds = array.array("Q")
        with open(out, "rb") as f:
            nanoseconds.frombytes(f.read())
    if run.stdout.split() != ["ops", str(len(nanoseconds))]:
        raise SystemExit(f"the {load} load reported {run.stdout!r} "
                         f"for {len(nanoseconds)} latencies")
    return [ns * 1e-9 for ns in nanoseconds]


class LoadGenerator:
    """Makes one load against one socket and returns its latencies, in C or in Python."""

    def __init__(self, binary: Optional[Path], compiler: str = "cc"):
        self.binary = binary
        self.compiler = compiler

    def latencies(self, path: str, load: str, seconds: float) -> List[float]:
        if self.binary is None:
            return python_latencies(path, load, seconds)
        return c_latencies(self.binary, path, load, seconds)

    def describe(self) -> str:
        if self.binary is None:
            shapes = {load: (spec["processes"], *(spec["args"][::-1] or (1, 1)))
                      for load, spec in PYTHON_LOADS.items()}
            what = "Python worker processes"
        else:
            shapes = {load: (spec["processes"], spec["connections"], spec["depth"])
                      for load, spec in C_LOADS.items()}
            what = f"C, {C_SOURCE.relative_to(ROOT)} built with {self.compiler} -O2"
        shape = ", ".join(f"{load} {processes}×{connections}" + (f"×{depth}" if depth > 1 else "")
                          for load, (processes, connections, depth) in shapes.items())
        return f"Load generator: {what} (processes×connections[×in flight]: {shape})"


def cpu_seconds(pid: int) -> Tuple[float, float]:
    """User and system (kernel) CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class OneCore:
    """Puts this process (so the load it starts) and ``pids`` on one core, then back."""

    def __init__(self, pids: List[int]):
        self.pids = [os.getpid(), *pids]
        self.saved = [os.sched_getaffinity(pid) for pid in self.pids]
        self.core = max(self.saved[0])

    def __enter__(self) -> "OneCore":
        for pid in self.pids:
            os.sched_setaffinity(pid, {self.core})
        return self

    def __exit__(self, *exc) -> None:
        for pid, cores in zip(self.pids, self.saved):
            os.sched_setaffinity(pid, cores)


def run_queue_seconds(pid: int) -> float:
    """Time a process has spent ready to run but waiting for a core (nan where unknown)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_load(generator: LoadGenerator, path: str, load: str, seconds: float,
             pids: List[int] = ()) -> Tuple[float, ...]:
    """(ops/s, p50 µs, p99 µs, server CPU µs/op, front busy %, its wait %, kernel %) of a load.

    ``pids`` are the server processes on the path, the one the load connects to first:
    the CPU they spend per operation is the cost that ops/s hides on a shared machine,
    and the front one's busy share says whether the load generator kept it saturated
    (near 100 %) or capped the figure (well below); its wait share is the time it was held
    back by the machine's other processes instead.  The kernel share is the part of the
    servers' CPU time spent in system calls and wake-ups, which no runtime shortens.
    """
    cpu_before = [cpu_seconds(pid) for pid in pids]
    queued_before = run_queue_seconds(pids[0]) if pids else float("nan")
    start = time.perf_counter()
    if load in ONE_CORE:
        with OneCore(pids):
            latencies = generator.latencies(path, load, seconds)
    else:
        latencies = generator.latencies(path, load, seconds)
    elapsed = time.perf_counter() - start
    used = [cpu_seconds(pid) for pid in pids]
    user = sum(after[0] - before[0] for after, before in zip(used, cpu_before))
    kernel = sum(after[1] - before[1] for after, before in zip(used, cpu_before))
    queued = run_queue_seconds(pids[0]) - queued_before if pids else float("nan")
    if not latencies:
        raise SystemExit(f"no {load} operation completed against {path} in {seconds} s")
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e6  # noqa: E731
    ops = len(latencies)
    nan = float("nan")
    cpu_per_op = (user + kernel) / ops * 1e6 if pids else nan
    busy = sum(used[0]) - sum(cpu_before[0]) if pids else nan
    kernel_share = kernel / (user + kernel) * 100 if user + kernel else nan
    return (ops / elapsed, pick(0.50), pick(0.99), cpu_per_op, busy / elapsed * 100,
            queued / elapsed * 100, kernel_share)


# Servers ------------------------------------------------------------------------------

class Servers:
    """The three servers of one runtime, started one at a time in a private directory."""

    def __init__(self, python: str):
        self.python = python
        self.dir = tempfile.mkdtemp(prefix="perop-", dir="/tmp")
        self.procs: List[subprocess.Popen] = []

    def _start(self, args: List[str], path: str) -> subprocess.Popen:
        proc = subprocess.Popen([self.python, *args], env=child_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_for_socket(path, proc)
        return proc

    def bare(self) -> str:
        path = os.path.join(self.dir, "bare")
        self._start(["-c", BARE_SERVER, path, str(len(REQUEST)), REPLY.hex()], path)
        return path

    def dc_server(self) -> str:
        path = os.path.join(self.dir, "server")
        self._start(["-c", TWISTD, "--nodaemon", "--pidfile=", "--logfile=/dev/null",
                     "dc_server", "--listen", f"UNIX:{path}", "--sessions", "100000"], path)
        store_session(path)
        return path

    def dc_client(self, server: str) -> str:
        path = os.path.join(self.dir, "client")
        self._start(["-c", TWISTD, "--nodaemon", "--pidfile=", "--logfile=/dev/null",
                     "dc_client", "--listen", f"UNIX:{path}", "--server", f"UNIX:{server}",
                     "--retry", "200"], path)
        deadline = time.monotonic() + 15
        while True:  # dc_client answers empty until its server link is up
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(REQUEST)
                got = s.recv(65536)
            if got.startswith(REPLY[:len(got)]) and len(got) > 14:
                return path
            if time.monotonic() > deadline:
                raise SystemExit("dc_client never reached its server")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)


def measure_runtime(generator: LoadGenerator, python: str, seconds: float,
                    warmup: float) -> Dict[Tuple[str, str], tuple]:
    figures = {}
    servers = Servers(python)
    try:
        targets = {"bare": (servers.bare(), [servers.procs[-1].pid])}
        server = servers.dc_server()
        targets["dc_server"] = (server, [servers.procs[-1].pid])
        targets["dc_client"] = (servers.dc_client(server),
                                [servers.procs[-1].pid, servers.procs[-2].pid])
        for load in LOADS:
            for name, (path, pids) in targets.items():
                run_load(generator, path, load, warmup)  # JIT warm-up, caches, page faults
                figures[(name, load)] = run_load(generator, path, load, seconds, pids)
    finally:
        servers.stop()
    return figures


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit("no VmRSS")


def session_memory(python: str, count: int = 50000, size: int = 200) -> float:
    """Bytes of dc_server RSS per stored session beyond its id and data."""
    servers = Servers(python)
    try:
        path = servers.dc_server()
        pid = servers.procs[-1].pid
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            decoder = wire.Decoder(expect=True)
            ack = len(wire.encode_response(1, wire.OP_ADD, b"\x00"))

            def add_range(start, stop):
                reqs = [wire.encode_request(i & 0xFFFFFFFF, wire.OP_ADD, wire.encode_add_payload(
                    b"mem-%028d" % i, (b"%08d" % i) * (size // 8), 3600000)) for i in range(start, stop)]
                s.sendall(b"".join(reqs))
                want, got = (stop - start) * ack, 0
                while got < want:
                    got += len(s.recv(1 << 20))

            add_range(0, 2000)          # the store's and the allocator's first growth
            before = rss_kib(pid)
            for start in range(2000, 2000 + count, 1000):
                add_range(start, start + 1000)
            after = rss_kib(pid)
            del decoder
        id_len = len(b"mem-%028d" % 0)
        return (after - before) * 1024 / count - id_len - size
    finally:
        servers.stop()


def find_pypy() -> Optional[str]:
    candidate = ROOT / ".venv-pypy" / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    return shutil.which("pypy3")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--pypy", action="store_true",
                        help="also run the servers on PyPy (.venv-pypy, or pypy3 on PATH)")
    parser.add_argument("--python", default=sys.executable, help="the CPython for the servers")
    parser.add_argument("--load", choices=("c", "python"), default="c",
                        help="the load generator: c (bench/perop_load.c; Python workers when "
                             "there is no C compiler) or python")
    args = parser.parse_args(argv)

    cc = c_compiler() if args.load == "c" else []
    if args.load == "c" and not cc:
        print("No C compiler (cc) found: the load comes from Python worker processes, "
              "which can cap the figures.")
    generator = LoadGenerator(build_c_load(cc) if cc else None, " ".join(cc))

    runtimes = {"CPython": args.python}
    if args.pypy:
        pypy = find_pypy()
        if pypy is None:
            raise SystemExit("--pypy: no .venv-pypy/bin/python and no pypy3 on PATH")
        runtimes["PyPy"] = pypy
    results = {name: measure_runtime(generator, python, args.seconds, args.warmup)
               for name, python in runtimes.items()}

    print(generator.describe())

    for name, figures in results.items():
        print(f"\n{name} servers ({runtimes[name]})")
        print(f"{'server':<10} {'load':<15} {'ops/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'/ bare':>7}"
              f" {'CPU µs/op':>10} {'/ bare':>7} {'kernel %':>8} {'busy %':>7} {'wait %':>7}")
        for load in LOADS:
            floor = figures[("bare", load)][0]
            floor_cpu = figures[("bare", load)][3]
            for server in ("bare", "dc_server", "dc_client"):
                rate, p50, p99, cpu, busy, wait, kernel = figures[(server, load)]
                print(f"{server:<10} {load:<15} {rate:>9,.0f} {p50:>8,.0f} {p99:>8,.0f} "
                      f"{rate / floor:>7.2f} {cpu:>10,.1f} {cpu / floor_cpu:>7.2f} {kernel:>8.0f}"
                      f" {busy:>7.0f} {wait:>7.0f}")
        for load in ("1 in flight", "1 in fl, 1 core"):
            direct = figures[("dc_server", load)][1]
            proxied = figures[("dc_client", load)][1]
            print(f"dc_client p50 / direct p50, {load}: {proxied / direct:.2f}")
    if "PyPy" in results:
        # A runtime shortens the user part of the servers' CPU time, not the kernel's: the
        # most it can speed a saturated row is CPython's CPU per op over its kernel part.
        print("\nPyPy / CPython, same load (in brackets: the ceiling CPython's kernel share "
              "leaves, 100 / kernel %):")
        for server in ("bare", "dc_server", "dc_client"):
            cells = []
            for load in LOADS:
                pypy, cpython = results["PyPy"][(server, load)], results["CPython"][(server, load)]
                cells.append(f"{load} {pypy[0] / cpython[0]:.2f} ({100 / cpython[6]:.1f})")
            print(f"{server:<10} " + "   ".join(cells))
    print()
    for name, python in runtimes.items():
        print(f"{name}: a stored session costs {session_memory(python):,.0f} B of dc_server memory "
              "beyond its id and data (RSS growth over 50,000 sessions of 200 B)")


if __name__ == "__main__":
    main()
