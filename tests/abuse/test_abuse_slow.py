"""Slow senders: a byte a second mid-frame and mid-line, at every listener at once.

Each slow sender sends the start of a correct request at once and its last
bytes one a second; meanwhile correct requests from other clients must be
answered promptly, and the slow request itself is answered once complete.
"""

import os
import socket
import threading
import time

from distcache import wire

from abuse_support import (distcache_roundtrip, door_hello_ok, memcache_roundtrip, metrics_ok)

TRICKLED = 4       # bytes sent one a second at the end of each request
PROMPT = 3.0       # seconds a fast client may wait while the slow ones trickle


def slow_request(port, request, reply_ends, results, name):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request[:-TRICKLED])
            for i in range(TRICKLED, 0, -1):
                time.sleep(1.0)  # pacing the sender, not deciding a verdict
                s.sendall(request[len(request) - i:len(request) - i + 1])
            got = b""
            while not reply_ends(got):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            results[name] = got
    except OSError as e:
        results[name] = e


def distcache_get_request(session_id):
    return wire.encode_request(7, wire.OP_GET, session_id)


def distcache_reply_complete(got):
    return len(got) >= wire.HEADER_SIZE and len(got) >= wire.HEADER_SIZE + \
        int.from_bytes(got[12:14], "big")


def test_slow_senders_at_every_listener_at_once(cache_stack, door_proc):
    stack, door = cache_stack, door_proc
    sid, data = b"slow-" + os.urandom(6).hex().encode(), os.urandom(200)
    assert distcache_roundtrip(stack.server_port, sid, data)
    assert memcache_roundtrip(stack.server_memcache, b"slowkey", b"slow value")
    distcache = (distcache_get_request(sid), distcache_reply_complete)
    memcache = (b"get slowkey\r\n", lambda got: got.endswith(b"END\r\n"))
    http = (b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n", lambda got: False)  # read to close
    hello = (b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n',
             lambda got: got.endswith(b"\n"))
    slow = {
        "dc_server distcache": (stack.server_port,) + distcache,
        "dc_server memcache": (stack.server_memcache,) + memcache,
        "dc_server metrics": (stack.server_metrics,) + http,
        "dc_client local": (stack.client_port,) + distcache,
        "dc_client memcache": (stack.client_memcache,) + memcache,
        "dc_snoop": (stack.snoop_port,) + distcache,
        "door control": (door.port,) + hello,
        "door metrics": (door.metrics_port,) + http,
    }
    fast = {
        "dc_server distcache": lambda: distcache_roundtrip(stack.server_port, b"f1", b"x"),
        "dc_server memcache": lambda: memcache_roundtrip(stack.server_memcache, b"f2", b"x"),
        "dc_client local": lambda: distcache_roundtrip(stack.client_port, b"f3", b"x"),
        "dc_client memcache": lambda: memcache_roundtrip(stack.client_memcache, b"f4", b"x"),
        "dc_snoop": lambda: distcache_roundtrip(stack.snoop_port, b"f5", b"x"),
        "door control": lambda: door_hello_ok(door.port),
        "server metrics": lambda: metrics_ok(stack.server_metrics),
        "door metrics": lambda: metrics_ok(door.metrics_port),
    }
    results = {}
    threads = [threading.Thread(target=slow_request, args=(port, req, ends, results, name))
               for name, (port, req, ends) in slow.items()]
    started = time.monotonic()
    for t in threads:
        t.start()
    waits = {}
    try:
        time.sleep(1.5)  # let every slow sender be mid-request before the fast ones come
        for name, probe in fast.items():
            t0 = time.monotonic()
            assert probe(), "%s did not answer while slow senders trickled" % name
            waits[name] = time.monotonic() - t0
    finally:
        for t in threads:
            t.join(60)
    elapsed = time.monotonic() - started
    print("FIGURE slow: %d slow senders, %.1f s in all, slowest fast answer %.3f s"
          % (len(slow), elapsed, max(waits.values())))
    assert max(waits.values()) < PROMPT, waits
    for name in ("dc_server distcache", "dc_client local", "dc_snoop"):
        reply = wire.Decoder(expect=True).feed(results[name])
        assert [m.payload for m in reply] == [data], (name, results[name])
    for name in ("dc_server memcache", "dc_client memcache"):
        assert results[name] == b"VALUE slowkey 0 10\r\nslow value\r\nEND\r\n", results[name]
    for name in ("dc_server metrics", "door metrics"):
        assert results[name].startswith(b"HTTP/1.") and b" 200 " in results[name][:20], name
    assert results["door control"] == b"0 0 server welcome 2 47\n"
