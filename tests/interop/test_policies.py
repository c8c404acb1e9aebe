"""
The door's policies with the real dccp: openTimeout precedence with staged
files, reads cut at their deadline and resumed, writes not cut, buffer
clamping, strict and fuzzy checks, the passive port range and a failing HSM
script.  Each test starts its own door (twistd process) with a tape back end
whose stage delay is a couple of seconds, so time-based tests stay short.
"""

import os
import re
import socket
import stat
import threading
import time

import pytest
from twisted.internet.task import Clock

from distcache.dcap import hsm
from distcache.dcap.errors import Exists
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool

from interop_support import TRUST_LOCAL, Door, dccp
from polling import wait_until
from rawclient import ControlClient

STAGE_DELAY = 3.0
TIMEOUT_MESSAGE = "User timeout canceled session"


def payload(n, seed=1):
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


class Setup:
    """A state directory prepared before its door starts."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.root = os.path.join(self.tmp, "root")
        self.tape = os.path.join(self.tmp, "tape")
        os.makedirs(self.root, exist_ok=True)
        self.clock = Clock()
        self.pool = open_pool(
            self.root, fsync=False,
            hsm=hsm.DirectoryTape(self.tape, self.clock))

    def mkdirs(self, path):
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts)):
            try:
                self.pool.namespace.mkdir("/" + "/".join(parts[: i + 1]), ROOT, 0o777)
            except Exists:
                pass

    def put(self, path, data, state="disk"):
        """Store path as disk, tape (flushed, disk copy dropped) or lost."""
        pool = self.pool
        self.mkdirs(path.rsplit("/", 1)[0])
        up = pool.open_write(path, ROOT, 0o644, replace=True)
        up.file.write(data)
        entry = up.commit()
        if state == "tape":
            d = pool.flush(entry)
            self.clock.advance(0)
            flushed = []
            d.addCallback(flushed.append)
            assert flushed, "the directory tape flushes at once on the setup clock"
            pool.drop(flushed[0])
        elif state == "lost":
            # The namespace still says "on disk"; the copy is gone.
            os.unlink(pool.data_path(entry))
        return entry

    def tape_backend(self, stage_delay=STAGE_DELAY):
        hsm.save_config(self.root, "directory", self.tape, stage_delay=stage_delay)

    def script_backend(self, script):
        hsm.save_config(self.root, "script", script, timeout=10)

    def start(self, *options):
        self.pool.namespace.close()
        door = Door(self.tmp, *TRUST_LOCAL, "--anonymous-access", "FULL", *options)
        return door


@pytest.fixture
def running():
    doors = []
    yield doors
    for door in doors:
        door.stop()


def start(running, setup, *options):
    door = setup.start(*options)
    running.append(door)
    return door


def read_via_dccp(door, path, dest, *flags):
    rc, out = dccp(*flags, door.url(path), dest, timeout=60)
    return rc, out



def dccp_until_ok(*args, timeout=10, interval=0.1):
    """Run dccp until it succeeds or timeout passes: its last (rc, output)."""
    last = []

    def succeeded():
        last[:] = [dccp(*args, timeout=30)]
        return last[0][0] == 0

    wait_until(succeeded, timeout=timeout, interval=interval)
    return last[0]

# -- openTimeout precedence, with a file staged from tape -------------------

DATA = payload(300_000)

# Each level set so that it contradicts the level below it.  The stage takes
# STAGE_DELAY seconds; a 1 s timeout is enforced by the first keep-alive pass
# after it (at most 2 s after the open), so it fails with rc 112 well before
# the stage ends, and a 30 s one lets the copy complete.
LEVELS = {
    "context dCap-openTimeout": (
        "set context dCap-openTimeout 1\n", [], [], False),
    "context openTimeout over dCap-openTimeout": (
        "set context dCap-openTimeout 1\nset context openTimeout 30\n", [], [], True),
    "door -openTimeout over context": (
        "set context dCap-openTimeout 30\nset context openTimeout 30\n",
        ["--door-options", "-openTimeout=1"], [], False),
    "client -timeout over door (longer)": (
        "", ["--door-options", "-openTimeout=1"], ["-o", "30"], True),
    "client -timeout over door (shorter)": (
        "", ["--door-options", "-openTimeout=30"], ["-o", "1"], False),
}


@pytest.mark.parametrize("level", list(LEVELS))
def test_open_timeout_precedence_with_a_staged_file(running, tmp_path, level):
    batch_text, options, client, succeeds = LEVELS[level]
    setup = Setup(tmp_path)
    setup.put("/tape/f", DATA, state="tape")
    setup.tape_backend()
    batch = tmp_path / "door.batch"
    batch.write_text(batch_text)
    door = start(running, setup, "--batch", str(batch), "--keep-alive", "1", *options)
    dest = tmp_path / "copy"
    started = time.monotonic()
    rc, out = read_via_dccp(door, "/tape/f", dest, *client)
    elapsed = time.monotonic() - started
    if succeeds:
        assert rc == 0, out
        assert dest.read_bytes() == DATA
        assert elapsed >= STAGE_DELAY - 0.5
    else:
        assert rc != 0, out
        assert TIMEOUT_MESSAGE in out
        assert elapsed < STAGE_DELAY + 1.5
        assert "failed 112" in door.log_text() or TIMEOUT_MESSAGE in door.log_text()


def test_no_keep_alive_means_the_open_waits_for_the_stage(running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/tape/f", DATA, state="tape")
    setup.tape_backend()
    door = start(running, setup, "--open-timeout", "1")
    rc, out = read_via_dccp(door, "/tape/f", tmp_path / "copy")
    assert rc == 0, out
    assert (tmp_path / "copy").read_bytes() == DATA


# -- a read flowing at its deadline is cut and resumed; a write is not cut --

def slow_reader(fifo, result, delay=0.04, chunk=256 * 1024):
    with open(fifo, "rb") as f:
        parts = []
        while True:
            b = f.read(chunk)
            if not b:
                break
            parts.append(b)
            time.sleep(delay)
    result.append(b"".join(parts))


def test_read_flowing_at_the_deadline_is_interrupted_and_resumed(running, tmp_path):
    data = payload(16 << 20, seed=7)
    setup = Setup(tmp_path)
    setup.put("/disk/big", data)
    door = start(running, setup, "--open-timeout", "1", "--keep-alive", "1",
                 "--max-send-buffer-size", "65536")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=slow_reader, args=(fifo, got))
    reader.start()
    rc, out = dccp("-r", "65536", door.url("/disk/big"), fifo, timeout=60)
    reader.join(30)
    assert rc == 0, out
    assert got and got[0] == data
    log = door.log_text()
    assert "interrupting it" in log
    # dccp resumed the read with a new open, which the door served.
    assert len(re.findall(r"data connection for session \d+", log)) >= 2


def test_write_in_flight_at_the_deadline_is_not_cut(running, tmp_path):
    data = payload(6 << 20, seed=9)
    setup = Setup(tmp_path)
    setup.mkdirs("/w")
    door = start(running, setup, "--open-timeout", "1", "--keep-alive", "1",
                 "--allow-truncate")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def slow_writer():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 256 * 1024):
                f.write(data[i:i + 256 * 1024])
                f.flush()
                time.sleep(0.1)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    rc, out = dccp(fifo, door.url("/w/slow"), timeout=60)
    writer.join(30)
    assert rc == 0, out
    assert door.read("/w/slow") == data
    assert "the write continues" in door.log_text()


# -- buffer sizes, as the kernel reports them on the data socket ------------

def kernel_value(requested, sysctl):
    with open("/proc/sys/net/core/" + sysctl) as f:
        cap = int(f.read())
    return 2 * min(requested, cap)


def reported_sizes(log):
    return [(int(s), int(r)) for s, r in
            re.findall(r"kernel reports SO_SNDBUF=(\d+) SO_RCVBUF=(\d+)", log)]


def test_buffer_sizes_clamped_both_ways(running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/disk/f", DATA)
    door = start(running, setup,
                 "--max-send-buffer-size", "131072", "--max-recv-buffer-size", "98304",
                 "--default-send-buffer-size", "81920")
    cases = [
        # dccp -r asks for the pool's send buffer, -s for its receive buffer.
        ([], (81920, 98304)),                                   # defaults (recv default clamped)
        (["-r", "32768", "-s", "16384"], (32768, 16384)),       # small requests honoured
        (["-r", "8388608", "-s", "8388608"], (131072, 98304)),  # large ones clamped to the max
    ]
    for flags, (send, recv) in cases:
        before = len(reported_sizes(door.log_text()))
        rc, out = dccp(*flags, door.url("/disk/f"), tmp_path / "copy", timeout=30)
        assert rc == 0, out
        assert (tmp_path / "copy").read_bytes() == DATA
        sizes = reported_sizes(door.log_text())[before:]
        assert sizes == [(kernel_value(send, "wmem_max"), kernel_value(recv, "rmem_max"))], (flags, sizes)


def test_buffer_sizes_in_client_passive_mode(running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/disk/f", DATA)
    door = start(running, setup, "--connect-back", "--max-send-buffer-size", "131072")
    before = len(reported_sizes(door.log_text()))
    rc, out = dccp("-r", "8388608", door.url("/disk/f"), tmp_path / "copy",
                   env={"DCACHE_CLIENT_ACTIVE": "false"}, timeout=30)
    assert rc == 0, out
    assert (tmp_path / "copy").read_bytes() == DATA
    sizes = reported_sizes(door.log_text())[before:]
    assert [s for s, _ in sizes] == [kernel_value(131072, "wmem_max")]


# -- check: strict and fuzzy --------------------------------------------------

EXPECTED_CHECK = {
    # file state: (fuzzy answer, strict answer); True = ok
    "disk": (True, True),
    "tape": (False, False),
    "lost": (True, False),
    "missing": (False, False),
}


@pytest.mark.parametrize("mode", ["fuzzy", "strict"])
def test_check_with_dccp_P_t_minus_1(running, tmp_path, mode):
    setup = Setup(tmp_path)
    for state in ("disk", "tape", "lost"):
        setup.put("/c/" + state, DATA, state=state)
    setup.tape_backend()
    door = start(running, setup, "--check", mode)
    for state, answers in EXPECTED_CHECK.items():
        ok = answers[0] if mode == "fuzzy" else answers[1]
        rc, out = dccp("-P", "-t", "-1", door.url("/c/" + state), timeout=30)
        if ok:
            assert rc == 0, (state, out)
        else:
            assert rc == 255, (state, out)
            assert "not cached" in out, (state, out)


def test_stage_answers_at_once_and_check_follows(running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/c/tape", DATA, state="tape")
    setup.tape_backend()
    door = start(running, setup, "--check", "strict")
    started = time.monotonic()
    rc, out = dccp("-P", door.url("/c/tape"), timeout=30)
    assert rc == 0, out
    assert time.monotonic() - started < STAGE_DELAY - 1
    rc, out = dccp("-P", "-t", "-1", door.url("/c/tape"), timeout=30)
    assert rc == 255 and "not cached" in out, out
    rc, out = dccp_until_ok("-P", "-t", "-1", door.url("/c/tape"), interval=0.2)
    assert rc == 0, out


# -- the passive port range ---------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_one_port_range_serves_a_waiting_open_and_another_transfer_side_by_side(
        running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/disk/a", DATA)
    setup.put("/disk/b", DATA)
    port = free_port()
    door = start(running, setup, "--portrange",
                 "org.dcache.net.tcp.portrange=%d:%d" % (port, port))
    # A client that opens and then never connects waits on the one data port ...
    waiting = ControlClient(door.port)
    reply = waiting.ask('1 0 client open "dcap://127.0.0.1//disk/a" r 127.0.0.1 1 -passive -uid=0')
    assert reply.split()[3:6] == ["connect", "127.0.0.1", str(port)], reply
    # ... and the next transfer shares that port.
    rc, out = dccp("-A", door.url("/disk/b"), tmp_path / "second", timeout=30)
    assert rc == 0, out
    assert (tmp_path / "second").read_bytes() == DATA
    waiting.close()


# -- a failing HSM script -----------------------------------------------------

FAILING_SCRIPT = """#!/bin/sh
# An HSM script whose recalls fail permanently.
echo "tape drive offline for $1 $2" >&2
exit 31
"""


def test_failing_hsm_script_fails_the_open_clearly(running, tmp_path):
    setup = Setup(tmp_path)
    setup.put("/tape/f", DATA, state="tape")
    script = tmp_path / "hsm.sh"
    script.write_text(FAILING_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    setup.script_backend(str(script))
    door = start(running, setup, "--open-timeout", "20", "--keep-alive", "1")
    started = time.monotonic()
    rc, out = dccp(door.url("/tape/f"), tmp_path / "copy", timeout=30)
    assert rc == 255, out
    assert time.monotonic() - started < 10
    assert "Failed open file" in out, out
    # The door answered the open with the script's own reason.
    log = door.log_text()
    assert re.search(r"open failed: \d+ HSM script hsm.sh get \S+ failed permanently "
                     r"\(exit 31\): tape drive offline", log), log
    assert not (tmp_path / "copy").exists() or (tmp_path / "copy").stat().st_size == 0
