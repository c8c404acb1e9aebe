"""SIGTERM to a real twistd door while the real dccp reads from it.

The read running at SIGTERM completes; an open on a connection made before
is refused; when the grace is over the clients still connected read
``0 0 server shutdown`` (the line libdcap takes as the door going away),
and the process exits.
"""

import os
import signal
import subprocess
import threading
import time

from interop_support import DCCP, TRUST_LOCAL, Door
from rawclient import ControlClient

GRACE = 8


def payload(n):
    block = bytes((i * 13 + 5) % 251 for i in range(65536))
    return (block * (n // len(block) + 1))[:n]


def slow_reader(path, out, chunk=256 * 1024, delay=0.01):
    """Read a FIFO a chunk at a time, so the sender waits on us."""
    parts = []
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            parts.append(b)
            time.sleep(delay)
    out.append(b"".join(parts))


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


def test_sigterm_lets_a_running_read_finish_then_tells_clients(tmp_path):
    door = Door(str(tmp_path), *TRUST_LOCAL, "--anonymous-access", "FULL", "--shutdown-grace", str(GRACE))
    try:
        data = payload(48 << 20)
        door.put("/big", data)
        door.put("/small", b"small")
        door.pool.namespace.close()
        door.pool = None

        # one client holds an open whose data connection never comes, one is idle
        holder = ControlClient(door.port)
        reply = holder.ask('1 0 client open "dcap://127.0.0.1//small" r 127.0.0.1 1 -passive -uid=0')
        assert reply.split()[3] == "connect", reply
        idle = ControlClient(door.port)

        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=slow_reader, args=(fifo, got))
        reader.start()
        env = dict(os.environ)
        env.pop("DCACHE_CLIENT_ACTIVE", None)
        copy = subprocess.Popen([DCCP, door.url("/big"), str(fifo)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: "transfer 2: data connection up" in door.log_text(), 30, "dccp's data")
        assert copy.poll() is None

        door.proc.send_signal(signal.SIGTERM)
        term = time.monotonic()
        wait_for(lambda: "door stopping" in door.log_text(), 10, "the door to start stopping")

        refused = idle.ask('2 0 client open "dcap://127.0.0.1//small" r 127.0.0.1 1 -passive -uid=0')
        assert refused == '2 0 client failed 5 "Door is shutting down"'

        out, _ = copy.communicate(timeout=60)
        reader.join(30)
        assert copy.returncode == 0, out
        assert got and got[0] == data
        assert time.monotonic() - term < GRACE  # it finished inside the grace

        assert holder.line() == "0 0 server shutdown"
        assert idle.line() == "0 0 server shutdown"
        assert time.monotonic() - term >= GRACE - 0.5
        assert holder.line() == "" and idle.line() == ""  # then the door hangs up
        door.proc.wait(15)
        log = door.log_text()
        assert "transfer 2 ended: done" in log
        assert "transfer 1 ended: door stopping" in log
        assert "DCAP door stopped" in log
        holder.close()
        idle.close()
    finally:
        door.stop()
