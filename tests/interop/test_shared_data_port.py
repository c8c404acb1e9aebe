"""One data port for every mover: many concurrent dccp transfers through a one-port range."""

import os
import socket
import subprocess
import time

from distcache.dcap import mover_codec as mc
from distcache.dcap.namespace import ROOT

from interop_support import DCCP, Door, free_low_port
from rawclient import ControlClient

TRANSFERS = 200
SIZE = 3 * 1024


def test_200_concurrent_dccp_transfers_share_one_data_port(tmp_path):
    port = free_low_port()
    door = Door(str(tmp_path), "--anonymous-access", "FULL", "--portrange", "%d:%d" % (port, port))
    try:
        ns = door.storage().namespace
        ns.mkdir("/r", ROOT, 0o755)
        ns.mkdir("/w", ROOT, 0o777)
        reads = {}
        for i in range(TRANSFERS // 2):
            reads[i] = os.urandom(SIZE + i)
            door.put("/r/%d" % i, reads[i])
        writes = {}
        for i in range(TRANSFERS // 2):
            writes[i] = os.urandom(SIZE + i)
            (tmp_path / ("up-%d" % i)).write_bytes(writes[i])
        env = dict(os.environ)
        env.pop("DCACHE_CLIENT_ACTIVE", None)
        procs = []
        started = time.monotonic()
        for i in range(TRANSFERS // 2):  # reads and writes interleaved
            procs.append(subprocess.Popen(
                [DCCP, "-A", door.url("/r/%d" % i), str(tmp_path / ("down-%d" % i))],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(
                [DCCP, "-A", str(tmp_path / ("up-%d" % i)), door.url("/w/%d" % i)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        failures = []
        for p in procs:
            out, _ = p.communicate(timeout=max(1, 90 - (time.monotonic() - started)))
            if p.returncode != 0:
                failures.append(out.decode(errors="replace"))
        assert failures == [], "%d failed, first: %s" % (len(failures), failures[:1])
        for i, data in reads.items():
            assert (tmp_path / ("down-%d" % i)).read_bytes() == data, i
        for i, data in writes.items():
            assert door.read("/w/%d" % i) == data, i
        log = door.log_text()
        assert log.count("data port listening on") == 1
        assert "no free data port" not in log
        assert log.count("data connection for session") == TRANSFERS
    finally:
        door.stop()


def closed_by_door(sock):
    """True when the door closes (or resets) the connection before sending anything."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_silent_or_replayed_data_connection_is_closed(tmp_path):
    port = free_low_port()
    door = Door(str(tmp_path), "--anonymous-access", "FULL", "--portrange", "%d:%d" % (port, port))
    try:
        door.put("/f", b"payload")
        control = ControlClient(door.port)
        line = control.ask('1 0 client open "dcap://127.0.0.1//f" r 127.0.0.1 1 -passive -uid=0')
        words = line.split()
        assert words[3:6] == ["connect", "127.0.0.1", str(port)], line
        challenge = words[6].encode("ascii")
        # A connection that says nothing is closed within a few seconds.
        silent = socket.create_connection(("127.0.0.1", port), timeout=15)
        began = time.monotonic()
        assert closed_by_door(silent)
        assert time.monotonic() - began < 10
        silent.close()
        good = socket.create_connection(("127.0.0.1", port), timeout=10)
        good.sendall(mc.encode_hello(1, challenge))
        # The same challenge a second time is refused.
        replay = socket.create_connection(("127.0.0.1", port), timeout=10)
        replay.sendall(mc.encode_hello(1, challenge))
        assert closed_by_door(replay)
        replay.close()
        good.sendall(mc.encode_close())
        assert control.line() == "1 0 client ok"
        good.close()
        control.close()
    finally:
        door.stop()
