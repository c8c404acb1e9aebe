"""Restarting a door without failing its clients: the listening socket outlives the door.

When the door goes away mid-read, dccp 2.47 reconnects once, at once.  Behind a socket
that stays open (systemd's dcap-door.socket; here the test holds it and hands it over
as fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does) that reconnect waits in the
kernel's backlog until the restarted door accepts it, and the copy completes.
"""

import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from interop_support import free_low_port
from polling import wait_until

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
ADMIN = [sys.executable, "-c", "from distcache.dcap.admin import main; main()"]
SIZE = 512 * 1024 * 1024


def start_door(listener, root, log):
    """A door serving the inherited socket as systemd would hand it over (fd 3)."""
    fd = listener.fileno()
    twistd = " ".join(shlex.quote(a) for a in TWISTD)
    script = (f"exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=dcap exec {twistd} "
              f"-n --pidfile= dcap-door --listen systemd:domain=INET:index=0 --root "
              f"{shlex.quote(str(root))} --anonymous-access FULL --no-fsync")
    return subprocess.Popen(["bash", "-c", script], pass_fds=(fd,), stdout=log,
                            stderr=subprocess.STDOUT, cwd=root.parent)


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def test_large_read_survives_a_door_restart_behind_a_held_socket(tmp_path):
    work = tmp_path
    root = work / "dcap"
    source = work / "big.dat"
    with open(source, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(SIZE >> 20):
            f.write(block[i % 256:] + block[:i % 256])
    subprocess.run(ADMIN + ["--root", str(root), "--no-fsync", "import", str(source),
                            "/big.dat"], check=True, capture_output=True, timeout=300)
    port = free_low_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    logs = [open(work / f"door{i}.log", "w") for i in (1, 2)]
    first = start_door(listener, root, logs[0])
    second = None
    copy = work / "copy.dat"
    try:
        assert wait_until(lambda: "DCAP door listening" in (work / "door1.log").read_text(), 30)
        # a slow reader: small socket buffers keep the read going long enough to cut it
        reader = subprocess.Popen(["dccp", "-B", "65536", "-r", "65536",
                                   f"dcap://127.0.0.1:{port}/big.dat", str(copy)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert wait_until(lambda: copy.exists() and copy.stat().st_size > 32 << 20, 60)
        part = copy.stat().st_size
        assert part < SIZE, "the read finished before the door could be cut"
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=20)
        cut_at = time.monotonic()
        second = start_door(listener, root, logs[1])
        out, _ = reader.communicate(timeout=300)
        assert reader.returncode == 0, out
        assert digest(copy) == digest(source)
        served = (work / "door2.log").read_text()
        assert "DCAP door listening" in served and "open r /big.dat" in served, served
        print(f"cut after {part} bytes; restarted door finished the copy "
              f"{time.monotonic() - cut_at:.1f} s after the cut")
    finally:
        listener.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
        for log in logs:
            log.close()
