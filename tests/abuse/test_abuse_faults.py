"""Faults: disconnects mid-frame and mid-transfer, dc_server SIGKILLed under load behind
dc_client, the door SIGKILLed during writes."""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time

from distcache import wire
from distcache.dcap import mover_codec as mc

from abuse_support import (rss_bound, Twistd, distcache_get, distcache_roundtrip, memcache_get,
                           memcache_roundtrip, rss_kib)
from conftest import start_cache_stack, stop_all
from interop_support import DCCP, TRUST_LOCAL, Door, dccp
from polling import wait_until
from rawclient import ControlClient, DataClient

RSS_BOUND_KIB = rss_bound(8 * 1024)


def test_disconnects_mid_frame_and_mid_line(cache_stack):
    stack = cache_stack
    sid, data = b"mid-" + os.urandom(6).hex().encode(), os.urandom(1000)
    assert distcache_roundtrip(stack.server_port, sid, data)
    assert memcache_roundtrip(stack.server_memcache, b"midkey", b"kept value")
    add = wire.encode_request(9, wire.OP_ADD, wire.encode_add_payload(b"cut", os.urandom(3000),
                                                                      60000))
    cuts = {
        stack.server_port: add, stack.client_port: add, stack.snoop_port: add,
        stack.server_memcache: b"set midkey 0 0 100\r\n" + b"x" * 50,
        stack.client_memcache: b"set midkey 0 0 100\r\n" + b"x" * 50,
    }
    pids = {p.pid: rss_kib(p.pid) for p in stack.processes}
    for port, request in cuts.items():
        for cut in range(1, len(request), max(1, len(request) // 40)):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(request[:cut])
    for port in (stack.server_port, stack.client_port, stack.snoop_port):
        assert distcache_get(port, sid) == data
        assert distcache_get(port, b"cut") is None  # no half-received ADD was stored
    for port in (stack.server_memcache, stack.client_memcache):
        assert memcache_get(port, b"midkey") == b"kept value"
    for pid, before in pids.items():
        assert rss_kib(pid) - before < RSS_BOUND_KIB


def test_disconnects_mid_transfer_keep_the_earlier_version(door_proc):
    door = door_proc
    door.put("/mid/file", b"the earlier version")
    for attempt in range(10):
        c = ControlClient(door.port)
        line = c.ask('%d 0 client open "%s" w -truncate -passive localhost 0 -uid=0'
                     % (attempt + 2, door.url("/mid/file")))
        d = DataClient(line, attempt + 2)
        d.send(mc.encode_write())
        assert d.reply()[:3] == (mc.ACK, mc.WRITE, 0)
        d.send(mc.DATA_HEADER + struct.pack(">i", 100000) + os.urandom(50000))
        if attempt % 2:
            d.close()   # the data connection goes first ...
            c.close()
        else:
            c.close()   # ... or the control connection
            d.close()
    incoming = os.path.join(door.root, "pool", "incoming")
    assert wait_until(lambda: os.listdir(incoming) == [], timeout=10)
    assert door.read("/mid/file") == b"the earlier version"


def test_dc_server_killed_under_load_behind_dc_client():
    directory = tempfile.mkdtemp(prefix="abuse-kill-")
    stack = start_cache_stack(directory)
    try:
        port = stack.client_port
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}

        def load(n):
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    ok = distcache_roundtrip(port, b"load-%d-%d" % (n, i), b"v" * 100)
                except Exception:  # DISCONNECTED or empty answers while the server is away
                    ok = False
                counts["ok" if ok else "failed"] += 1

        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            assert wait_until(lambda: counts["ok"] > 50, timeout=20)
            client_rss = rss_kib(stack.client.pid)
            stack.server.kill()
            killed = time.monotonic()
            assert wait_until(lambda: stack.client.count("lost the server") >= 1, timeout=10)
            assert stack.client.alive()
            stack.server = Twistd(stack.server.directory, "dc_server", stack.server.args,
                                  stack.server.ports).start()
            stack.processes[0] = stack.server
            served = counts["ok"]
            assert wait_until(lambda: counts["ok"] > served + 20, timeout=20)
            recovered = time.monotonic() - killed
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert distcache_roundtrip(port, b"after-kill", b"answered")
        text = stack.client.log_text()
        print("FIGURE kill dc_server: recovered through dc_client %.2f s after SIGKILL; "
              "%d ok, %d failed; dc_client rss %d -> %d KiB"
              % (recovered, counts["ok"], counts["failed"], client_rss,
                 rss_kib(stack.client.pid)))
        assert text.count("lost the server") == 1
        assert rss_kib(stack.client.pid) - client_rss < RSS_BOUND_KIB
    finally:
        stop_all(stack.processes)
        shutil.rmtree(directory, ignore_errors=True)


def test_door_killed_during_writes(tmp_path):
    door = Door(str(tmp_path), "--anonymous-access", "FULL", "--allow-truncate", *TRUST_LOCAL)
    try:
        kept = {}
        for i in range(5):
            kept["/kill/kept-%d" % i] = os.urandom(100000 + i)
            door.put("/kill/kept-%d" % i, kept["/kill/kept-%d" % i])
        sources = {}
        for i in range(8):
            sources[i] = tmp_path / ("up-%d" % i)
            sources[i].write_bytes(os.urandom(8 * 1024 * 1024))
        env = dict(os.environ)
        env.pop("DCACHE_CLIENT_ACTIVE", None)
        writers = [subprocess.Popen([DCCP, "-A", str(sources[i]), door.url("/kill/new-%d" % i)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for i in range(4)]
        # overwrites of kept files too
        writers += [subprocess.Popen([DCCP, "-A", str(sources[4 + i]),
                                      door.url("/kill/kept-%d" % i)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for i in range(2)]
        incoming = os.path.join(door.root, "pool", "incoming")
        assert wait_until(lambda: os.path.isdir(incoming) and os.listdir(incoming), timeout=20,
                          interval=0.01), "no write was under way"
        door.proc.send_signal(signal.SIGKILL)
        door.proc.wait(10)
        for w in writers:  # dccp retries a dead door for minutes: its fate is not tested
            w.kill()
            w.wait()
        door.stop()
        os.remove(door.log)  # the restarted door's "listening" line must be its own
        door = Door(str(tmp_path), "--anonymous-access", "FULL", "--allow-truncate", *TRUST_LOCAL)
        for path, data in kept.items():
            got = tmp_path / ("check-%s" % path.rsplit("/", 1)[1])
            rc, out = dccp("-A", door.url(path), got)
            assert rc == 0, out
            content = got.read_bytes()
            # an overwrite that finished before the kill is whole; otherwise the old version
            index = int(path.rsplit("-", 1)[1])
            assert content == data or (index < 2 and content == sources[4 + index].read_bytes())
        for i in range(4):
            got = tmp_path / ("check-new-%d" % i)
            rc, out = dccp("-A", door.url("/kill/new-%d" % i), got)
            if rc == 0:  # a file is either whole or absent
                assert got.read_bytes() == sources[i].read_bytes()
        assert dccp("-A", str(sources[7]), door.url("/kill/after"))[0] == 0
        assert door.read("/kill/after") == sources[7].read_bytes()
    finally:
        door.stop()
