"""DCAP throughput against a plain loopback TCP copy of the same bytes.

Starts a `twistd dcap-door` on a free port below 32768 with its state in a
temporary directory, then measures on this machine:

- a plain TCP copy over loopback: one process reads the file and sends
  it, another receives it and writes it to a file (the baseline);
- dccp writing the file into the door, and dccp reading it back (to a
  file, and to /dev/null against a plain copy to /dev/null);
- 16 dccp transfers at once (writes, then reads) of smaller files.

All files live in /dev/shm by default (--dir), so the figures compare the
transfers rather than the disk; on a disk, dirty pages are written back
before each run (sync) so that no figure pays for the one before.

It prints figures and ratios to the baseline; it is not a test.
Usage: python3 bench/dcap_throughput.py [--size-mib N] [--parallel N] [--fsync]
"""

import argparse
import os
import random
import shutil
import signal
import socket
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
            "--anonymous-access", "FULL", "--allow-truncate"]
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
    start = time.perf_counter()
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError("dccp failed: %s" % err.decode(errors="replace"))
    return time.perf_counter() - start


def rate(size, seconds):
    return size / MIB / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size for single transfers")
    parser.add_argument("--parallel", type=int, default=16, help="number of simultaneous transfers")
    parser.add_argument("--parallel-size-mib", type=int, default=64, help="file size per parallel transfer")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best is reported)")
    parser.add_argument("--fsync", action="store_true", help="let the pool fsync each written file")
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
        src = os.path.join(tmp, "src")
        dst = os.path.join(tmp, "dst")
        make_file(src, size)
        door, port = start_door(tmp, args.fsync)
        url = "dcap://127.0.0.1:%d" % port

        plains, plains_null, writes, reads, reads_null = [], [], [], [], []
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
            writes.append(timed(dccp(src, url + "/bench-one")))
            settle()
            reads.append(timed(dccp(url + "/bench-one", dst)))
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
        settle()
        seconds = timed(*[dccp(psrc, url + "/bench-p%d" % i) for i in range(n)])
        total = n * psize
        print("%2d parallel dccp writes                %8.1f MiB/s total (%d x %d MiB)   ratio %.2f"
              % (n, rate(total, seconds), n, args.parallel_size_mib, rate(total, seconds) / rate(size, plain)))
        settle()
        seconds = timed(*[dccp(url + "/bench-p%d" % i, os.devnull) for i in range(n)])
        print("%2d parallel dccp reads to /dev/null    %8.1f MiB/s total (%d x %d MiB)   ratio %.2f"
              % (n, rate(total, seconds), n, args.parallel_size_mib, rate(total, seconds) / rate(size, plain_null)))
    finally:
        if door is not None:
            door.send_signal(signal.SIGTERM)
            door.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
