"""DCAP throughput against a plain loopback TCP copy of the same bytes.

Starts a `twistd dcap-door` on a free port below 32768 with its state in a
temporary directory, then measures on this machine:

- a plain TCP copy over loopback: one process reads the file and sends
  it, another receives it and writes it to a file (the baseline);
- dccp writing the file into the door, and dccp reading it back (to a
  file, and to /dev/null against a plain copy to /dev/null);
- 16 dccp transfers at once (writes, then reads) of smaller files;
- small files: the median time of one dccp read of a 6-byte file next to
  `dccp -P` (a check, dccp's own start and one round trip), and 1 KiB
  files written and read per second by 1 and by 8 clients, each client
  running one dccp after the other.  "door" is the door's share of each
  open: from the open line to the `connect` reply, plus the mover's time
  answering requests and committing, without the waits on the client
  (`door_seconds` in the door's transfer log).

All files live in /dev/shm by default (--dir), so the figures compare the
transfers rather than the disk; on a disk, dirty pages are written back
before each run (sync) so that no figure pays for the one before.

It prints figures and ratios to the baseline (best of --repeat rounds), then
the write, parallel-write and read ratios of every round side by side, each
against the plain copy of the same round: on a shared machine the spread
says more than one best.  Below them, the ceiling dccp's own CPU time puts on each
ratio: dccp works one block after the other in one thread, so the plain copy's time
over dccp's CPU time is the most a door that cost nothing could reach.  It is not a test.
Usage: python3 bench/dcap_throughput.py [--size-mib N] [--parallel N] [--fsync] [--small N]
"""

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
MIB = 1 << 20

_RECEIVER = r"""
import socket, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
buf = bytearray(1 << 20)
view = memoryview(buf)
with open(sys.argv[1], "wb") as out:
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        out.write(view[:n])
"""

_SENDER = r"""
import socket, sys
conn = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
with open(sys.argv[1], "rb") as f:
    while True:
        block = f.read(1 << 20)
        if not block:
            break
        conn.sendall(block)
conn.close()
"""


def make_file(path, size):
    """A file of incompressible-looking bytes, written block by block."""
    block = random.Random(1).randbytes(MIB)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, MIB)
            f.write(block[:n])
            left -= n


def drop_dest(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def plain_copy(src, dst):
    """Seconds for a loopback TCP copy file -> socket -> file in two processes."""
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, dst], stdout=subprocess.PIPE, text=True)
    port = int(receiver.stdout.readline())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _SENDER, src, str(port)], check=True)
    receiver.wait()
    return time.perf_counter() - start


def free_low_port():
    for _ in range(500):
        port = random.randint(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below 32768")


def start_door(tmp, fsync):
    port = free_low_port()
    env = dict(os.environ, PYTHONPATH=CHECKOUT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
            "-l", os.path.join(tmp, "door.log"), "dcap-door", "--listen",
            "tcp:%d:interface=127.0.0.1" % port, "--root", os.path.join(tmp, "root"),
            "--anonymous-access", "FULL", "--trust-client-uid", "127.0.0.0/8", "--allow-truncate",
            "--transfer-log", os.path.join(tmp, "transfers.log")]
    if not fsync:
        argv.append("--no-fsync")
    proc = subprocess.Popen(argv, env=env, cwd=tmp)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("door did not start")
            time.sleep(0.05)


def dccp(*args):
    env = {k: v for k, v in os.environ.items() if k != "DCACHE_CLIENT_ACTIVE"}
    return subprocess.Popen(["dccp"] + [str(a) for a in args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def forget(tmp, path):
    """Remove a stored file through the namespace, as an administrator would."""
    subprocess.run([sys.executable, "-m", "distcache.dcap.admin", "--root", os.path.join(tmp, "root"),
                    "rm", path], env=dict(os.environ, PYTHONPATH=CHECKOUT), capture_output=True)


def settle():
    """Write back dirty pages first, so no run pays for an earlier one's writes."""
    os.sync()
    time.sleep(0.5)


def timed(*procs):
    """Seconds until every dccp of ``procs`` has finished."""
    return timed_cpu(*procs)[0]


def timed_cpu(*procs):
    """(seconds until every dccp has finished, the CPU seconds the dccp processes used).

    dccp reads or writes its file, takes the adler32 of every block and waits for the
    door's answer to each block before it sends the next, all in one thread: its own CPU
    time is a floor under the transfer's time that no door can lower.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError("dccp failed: %s" % err.decode(errors="replace"))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def rate(size, seconds):
    return size / MIB / seconds


def door_shares(tmp, first):
    """door_seconds of the transfer log's records from index first on."""
    with open(os.path.join(tmp, "transfers.log")) as f:
        records = [json.loads(line) for line in f][first:]
    return [r["door_seconds"] for r in records if r["result"] == "ok"], first + len(records)


def record_count(tmp):
    try:
        with open(os.path.join(tmp, "transfers.log")) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run_clients(clients, argvs_of):
    """Run each client's dccp commands one after the other, the clients side by side."""
    queues = [list(argvs_of(c)) for c in range(clients)]
    running = {}
    for c, q in enumerate(queues):
        if q:
            running[c] = dccp(*q.pop(0))
    done = 0
    while running:
        for c, p in list(running.items()):
            if p.poll() is None:
                continue
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError("dccp failed: %s" % err.decode(errors="replace"))
            done += 1
            if queues[c]:
                running[c] = dccp(*queues[c].pop(0))
            else:
                del running[c]
        time.sleep(0.0005)
    return done


def small_files(tmp, url, count):
    """Latency of one small read, and small files per second for 1 and 8 clients."""
    six = os.path.join(tmp, "six")
    with open(six, "wb") as f:
        f.write(b"hello\n")
    timed(dccp(six, url + "/six"))
    latencies, checks = [], []
    for _ in range(count):
        start = time.perf_counter()
        timed(dccp(url + "/six", os.devnull))
        latencies.append(time.perf_counter() - start)
        p = subprocess.Popen(["dccp", "-P", url + "/six"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        start = time.perf_counter()
        p.wait()
        checks.append(time.perf_counter() - start)
    mark = record_count(tmp)
    print("6-byte read, one dccp                  %8.1f ms median (%.1f-%.1f ms p10-p90), "
          "dccp -P %.1f ms" % (statistics.median(latencies) * 1e3,
                               _pct(latencies, 10) * 1e3, _pct(latencies, 90) * 1e3,
                               statistics.median(checks) * 1e3))

    kib = os.path.join(tmp, "kib")
    with open(kib, "wb") as f:
        f.write(random.Random(2).randbytes(1024))
    rows = []
    for clients in (1, 8):
        per = max(1, count // clients) if clients == 1 else max(1, count // 2)
        name = lambda c, i: "%s/small-%d-%d-%d" % (url, clients, c, i)
        start = time.perf_counter()
        n = run_clients(clients, lambda c: [(kib, name(c, i)) for i in range(per)])
        seconds = time.perf_counter() - start
        shares, mark = door_shares(tmp, mark)
        rows.append(("writes", clients, n / seconds, shares))
        start = time.perf_counter()
        n = run_clients(clients, lambda c: [(name(c, i), os.devnull) for i in range(per)])
        seconds = time.perf_counter() - start
        shares, mark = door_shares(tmp, mark)
        rows.append(("reads", clients, n / seconds, shares))
    for what, clients, per_second, shares in rows:
        print("1 KiB %-6s %d client%s               %8.1f files/s   door %.2f ms median (%.2f p90) a file"
              % (what, clients, " " if clients == 1 else "s", per_second,
                 statistics.median(shares) * 1e3, _pct(shares, 90) * 1e3))


def _pct(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, len(ordered) * p // 100)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size for single transfers")
    parser.add_argument("--parallel", type=int, default=16, help="number of simultaneous transfers")
    parser.add_argument("--parallel-size-mib", type=int, default=64, help="file size per parallel transfer")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per figure (best is reported, and each run's ratios)")
    parser.add_argument("--fsync", action="store_true", help="let the pool fsync each written file")
    parser.add_argument("--small", type=int, default=40,
                        help="small-file transfers per figure (0: leave the small-file rows out)")
    parser.add_argument("--only-small", action="store_true", help="only the small-file rows")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the files, the door's state and the copies live (default: /dev/shm, "
                             "so that the figures measure the transfer, not the disk)")
    args = parser.parse_args()
    if shutil.which("dccp") is None:
        sys.exit("dccp is not installed (Debian package dcap)")

    size = args.size_mib * MIB
    tmp = tempfile.mkdtemp(prefix="dcap-bench-", dir=args.dir)
    door = None
    try:
        door, port = start_door(tmp, args.fsync)
        url = "dcap://127.0.0.1:%d" % port
        if args.small:
            small_files(tmp, url, args.small)
        if args.only_small:
            return
        src = os.path.join(tmp, "src")
        dst = os.path.join(tmp, "dst")
        make_file(src, size)

        plains, plains_null, writes, reads, reads_null = [], [], [], [], []
        write_cpus, read_cpus, pwrite_cpus = [], [], []
        for i in range(args.repeat):
            settle()
            plains.append(plain_copy(src, dst))
            drop_dest(dst)
            settle()
            plains_null.append(plain_copy(src, os.devnull))
            # The plain copy's receiver writes into memory its deleted output just freed;
            # remove the stored copy too, so the door's write is not the only one paying
            # for pages the machine has never touched (on this VM ~10x slower to fill).
            forget(tmp, "/bench-one")
            settle()
            wall, cpu = timed_cpu(dccp(src, url + "/bench-one"))
            writes.append(wall)
            write_cpus.append(cpu)
            settle()
            wall, cpu = timed_cpu(dccp(url + "/bench-one", dst))
            reads.append(wall)
            read_cpus.append(cpu)
            drop_dest(dst)
            settle()
            reads_null.append(timed(dccp(url + "/bench-one", os.devnull)))
        plain, plain_null = min(plains), min(plains_null)
        write, read, read_null = min(writes), min(reads), min(reads_null)

        print("file size                              %8d MiB (best of %d), files in %s"
              % (args.size_mib, args.repeat, args.dir or tempfile.gettempdir()))
        print("plain loopback TCP copy, file to file  %8.1f MiB/s" % rate(size, plain))
        print("plain loopback TCP copy, to /dev/null  %8.1f MiB/s" % rate(size, plain_null))
        print("dccp write into the door               %8.1f MiB/s   ratio %.2f (to file to file)"
              % (rate(size, write), plain / write))
        print("dccp read from the door to a file      %8.1f MiB/s   ratio %.2f (to file to file)"
              % (rate(size, read), plain / read))
        print("dccp read from the door to /dev/null   %8.1f MiB/s   ratio %.2f (to /dev/null copy)"
              % (rate(size, read_null), plain_null / read_null))

        psize = args.parallel_size_mib * MIB
        psrc = os.path.join(tmp, "psrc")
        make_file(psrc, psize)
        n = args.parallel
        total = n * psize
        pwrites, preads = [], []
        for i in range(args.repeat):
            for j in range(n):
                forget(tmp, "/bench-p%d" % j)
            settle()
            wall, cpu = timed_cpu(*[dccp(psrc, url + "/bench-p%d" % j) for j in range(n)])
            pwrites.append(wall)
            pwrite_cpus.append(cpu)
            settle()
            preads.append(timed(*[dccp(url + "/bench-p%d" % j, os.devnull) for j in range(n)]))
        pwrite, pread = min(pwrites), min(preads)
        print("%2d parallel dccp writes                %8.1f MiB/s total (%d x %d MiB)   ratio %.2f"
              % (n, rate(total, pwrite), n, args.parallel_size_mib, rate(total, pwrite) / rate(size, plain)))
        print("%2d parallel dccp reads to /dev/null    %8.1f MiB/s total (%d x %d MiB)   ratio %.2f"
              % (n, rate(total, pread), n, args.parallel_size_mib, rate(total, pread) / rate(size, plain_null)))

        # Each round's ratios against the plain copies of the same round: on a
        # shared machine the spread says more than any single best.
        print()
        print("ratios by round (target)      " + "  ".join("%6s" % ("run %d" % (i + 1))
                                                        for i in range(args.repeat)))
        print("dccp write (>= 0.80)          " + "  ".join("%6.2f" % (plains[i] / writes[i])
                                                        for i in range(args.repeat)))
        print("%2d parallel writes (>= 0.70)  " % n
              + "  ".join("%6.2f" % (plains[i] / pwrites[i] * total / size) for i in range(args.repeat)))
        print("dccp read to file (>= 0.90)   " + "  ".join("%6.2f" % (plains[i] / reads[i])
                                                        for i in range(args.repeat)))
        # The most each ratio could be with a door that cost nothing: the plain copy's
        # time over dccp's own CPU time (the parallel dccps spread over the cores).
        cores = len(os.sched_getaffinity(0))
        print()
        print("ceilings set by dccp's own CPU (plain copy s / dccp CPU s; %d cores)" % cores)
        print("dccp write                    " + "  ".join("%6.2f" % (plains[i] / write_cpus[i])
                                                        for i in range(args.repeat)))
        print("%2d parallel writes            " % n
              + "  ".join("%6.2f" % (plains[i] * total / size / (pwrite_cpus[i] / cores))
                          for i in range(args.repeat)))
        print("dccp read to file             " + "  ".join("%6.2f" % (plains[i] / read_cpus[i])
                                                        for i in range(args.repeat)))
        print("dccp CPU s per GiB: write %s, read %s" % (
            " ".join("%.2f" % (c * (1 << 30) / size) for c in write_cpus),
            " ".join("%.2f" % (c * (1 << 30) / size) for c in read_cpus)))
    finally:
        if door is not None:
            door.send_signal(signal.SIGTERM)
            door.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
