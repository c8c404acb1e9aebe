"""dc_server on real unix and TCP sockets, started through its plugin's service."""

import os
import resource
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import defer

from distcache import wire
from distcache.address import AddressError
from distcache.startup import StartupError
from distcache.server_tap import CacheServerService, Options, makeService
from netutil import exchange
from vectors import transcript

GOLDEN = transcript("distcache-c-golden.log")
REQUESTS = b"".join(d for _, direction, d in GOLDEN if direction == "C>S")
REPLIES = b"".join(d for _, direction, d in GOLDEN if direction == "S>C")


def start(argv):
    options = Options()
    options.parseOptions(argv)
    service = makeService(options)
    service.privilegedStartService()
    service.startService()
    return service


def tcp_port(service):
    for child in service:
        if child.address.kind == "tcp":
            return child.port.getHost().port


@pytest_twisted.ensureDeferred
async def test_golden_vectors_on_unix_and_tcp(tmp_path):
    path = str(tmp_path / "cache.sock")
    service = start(["--listen", f"UNIX:{path}", "--listen", "IP:127.0.0.1:0"])
    try:
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        got = await exchange(f"unix:path={path}", REQUESTS, len(REPLIES))
        assert got == REPLIES
        port = tcp_port(service)
        got = await exchange(f"tcp:host=127.0.0.1:port={port}", REQUESTS, len(REPLIES))
        assert got == REPLIES
    finally:
        await service.stopService()
    assert not os.path.exists(path)


@pytest_twisted.ensureDeferred
async def test_pipelining_behind_large_get_replies(tmp_path):
    path = str(tmp_path / "cache.sock")
    service = start(["--listen", f"UNIX:{path}"])
    try:
        big = os.urandom(32768 - 8 - 3)
        stream = [wire.encode_request(0, wire.OP_ADD, wire.encode_add_payload(b"big", big, 60000))]
        stream += [wire.encode_request(uid, wire.OP_GET, b"big") for uid in range(1, 201)]
        want = len(wire.encode_response(0, 0, b"\x00")) + 200 * len(wire.encode_response(1, 1, big))
        got = await exchange(f"unix:path={path}", b"".join(stream), want)
        messages = wire.Decoder(expect=True).feed(got)
        assert [m.uid for m in messages] == list(range(201))
        assert all(m.payload == big for m in messages[1:])
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_thousands_of_concurrent_connections(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = 2000
    if soft < 2 * count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 200), hard))
    path = str(tmp_path / "cache.sock")
    service = start(["--listen", f"UNIX:{path}", "--sessions", "5000"])
    try:
        async def one(i):
            sid = b"session-%d" % i
            req = (wire.encode_request(1, wire.OP_ADD, wire.encode_add_payload(sid, sid * 3, 60000))
                   + wire.encode_request(2, wire.OP_GET, sid))
            want = len(wire.encode_response(1, 0, b"\x00")) + len(wire.encode_response(2, 1, sid * 3))
            got = await exchange(f"unix:path={path}", req, want)
            return [m.payload for m in wire.Decoder(expect=True).feed(got)]

        results = await defer.gatherResults(
            [defer.ensureDeferred(one(i)) for i in range(count)])
        assert all(r == [b"\x00", b"session-%d" % i * 3] for i, r in enumerate(results))
        assert len(service.factory.store) == count
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_malformed_connection_closes_others_carry_on(tmp_path):
    path = str(tmp_path / "cache.sock")
    service = start(["--listen", f"UNIX:{path}"])
    try:
        bad = await exchange(f"unix:path={path}", b"\x00\x99\x00\x00" + bytes(20), 1)
        assert bad == b""
        got = await exchange(f"unix:path={path}", REQUESTS, len(REPLIES))
        assert got == REPLIES
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stale_socket_is_replaced_and_permissions_applied(tmp_path):
    path = str(tmp_path / "cache.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves a socket file nobody listens on
    service = start(["--listen", f"UNIX:{path}", "--sockperms", "0600",
                     "--sockowner", str(os.getuid()), "--sockgroup", str(os.getgid())])
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        # a second server must not steal a live socket
        with pytest.raises(StartupError, match="in use") as e:
            start(["--listen", f"UNIX:{path}"])
        assert isinstance(e.value.__cause__, AddressError)
        got = await exchange(f"unix:path={path}", REQUESTS, len(REPLIES))
        assert got == REPLIES
    finally:
        await service.stopService()


def test_a_regular_file_is_never_removed(tmp_path):
    path = tmp_path / "not-a-socket"
    path.write_text("precious")
    with pytest.raises(StartupError, match="not a socket") as e:
        start(["--listen", f"UNIX:{path}"])
    assert isinstance(e.value.__cause__, AddressError)
    assert path.read_text() == "precious"


def test_service_pickles_before_start(tmp_path):
    import pickle

    options = Options()
    options.parseOptions(["--listen", f"UNIX:{tmp_path}/p.sock", "--sessions", "77"])
    service = pickle.loads(pickle.dumps(makeService(options)))
    assert isinstance(service, CacheServerService) and service.sessions == 77
    service.privilegedStartService()
    service.startService()
    assert service.factory.store.max_sessions == 77
    service.stopService()
