"""
The door's policies on task time: open deadlines enforced by the keep-alive
pass (failed 112, reads cut, writes kept), the passive port range, strict
check and buffer sizes, with a MemoryReactorClock and a directory tape whose
stage delay runs on the same clock.
"""

import os

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport

from distcache.dcap import hsm
from distcache.dcap import mover_codec as mc
from distcache.dcap.configsource import Setting
from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import DoorConfig
from distcache.dcap.namespace import ROOT, Access
from distcache.dcap.policy import KiB, resolve_policy
from distcache.dcap.pool import open_pool

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n'
TIMEOUT_REPLY = 'client failed 112 "User timeout canceled session"'
STAGE_DELAY = 10

#: StringTransport's peer (192.168.1.1) is in it: these clients' -uid=0 is believed.
TRUSTED = ("192.168.0.0/16",)


class Reactor(MemoryReactorClock):
    """listenTCP refuses ports in `busy`, as for ports other programs hold."""

    def __init__(self):
        super().__init__()
        self.busy = set()

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("in use"))
        return super().listenTCP(port, factory, backlog, interface)


@pytest.fixture
def reactor():
    return Reactor()


@pytest.fixture
def pool(tmp_path, reactor):
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), reactor, stage_delay=STAGE_DELAY)
    p = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False)
    yield p
    p.namespace.close()


def put(pool, reactor, path, data=b"data" * 100, state="disk"):
    up = pool.open_write(path, ROOT, 0o644, replace=True)
    up.file.write(data)
    entry = up.commit()
    if state == "tape":
        done = []
        pool.flush(entry).addCallback(done.append)
        reactor.advance(0)
        pool.drop(done[0])
    elif state == "lost":
        os.unlink(pool.data_path(entry))


def policy(**explicit):
    return resolve_policy(explicit={k: Setting(str(v), "--" + k) for k, v in explicit.items()})


class Door:
    def __init__(self, pool, reactor, **explicit):
        self.reactor = reactor
        self.factory = DoorFactory(pool, DoorConfig(access=Access.FULL, trust_client_uid=TRUSTED,
                                                    allow_truncate=True),
                                   reactor, policy=policy(**explicit))
        self.factory.policy.start()
        self.clients = []

    def client(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(HELLO)
        transport.clear()
        return proto, transport

    def advance(self, seconds):
        for _ in range(int(seconds)):
            self.reactor.advance(1)


def lines(transport):
    out = transport.value().decode("ascii").splitlines()
    transport.clear()
    return out


def send(proto, line):
    proto.dataReceived(line.encode("ascii") + b"\n")


def open_line(sid, path, mode="r", extra=""):
    return '%d 0 client open "dcap://h/%s" %s 127.0.0.1 1 -passive %s -uid=0' % (
        sid, path.lstrip("/"), mode, extra)


def connect_data(door, connect_reply, sid):
    """Play the client's side of server-passive: connect and present the challenge.

    (StringTransport says the door was reached on 10.0.0.1.)
    """
    words = connect_reply.split()
    port = int(words[5])
    factory = [f for p, f, _, _ in door.reactor.tcpServers if p == port][-1]
    channel = factory.buildProtocol(None)
    data = StringTransport()
    channel.makeConnection(data)
    channel.dataReceived(mc.encode_hello(sid, words[6].encode("ascii")))
    return channel, data


# -- open deadlines ------------------------------------------------------------

def test_open_waiting_for_a_stage_fails_with_112(pool, reactor):
    put(pool, reactor, "/t", state="tape")
    door = Door(pool, reactor, openTimeout=3, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/t", extra="-timeout=-1"))
    door.advance(2)
    assert lines(ctl) == []
    door.advance(1)
    assert lines(ctl) == ["1 0 " + TIMEOUT_REPLY]
    door.advance(STAGE_DELAY)  # the stage completes later: no second answer
    assert lines(ctl) == []


def test_client_timeout_beats_the_door(pool, reactor):
    put(pool, reactor, "/t", state="tape")
    door = Door(pool, reactor, openTimeout=3, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/t", extra="-timeout=20"))
    door.advance(STAGE_DELAY)
    out = lines(ctl)
    assert len(out) == 1 and out[0].startswith("1 0 client connect 10.0.0.1 "), out


def test_without_keep_alive_the_open_waits(pool, reactor):
    put(pool, reactor, "/t", state="tape")
    door = Door(pool, reactor, openTimeout=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/t"))
    door.advance(STAGE_DELAY)
    assert lines(ctl)[0].startswith("1 0 client connect ")


def test_open_waiting_for_its_client_fails_and_withdraws_its_challenge(pool, reactor):
    put(pool, reactor, "/d")
    door = Door(pool, reactor, openTimeout=2, keepAlive=1, portrange="40000:40000")
    proto, ctl = door.client()
    send(proto, open_line(1, "/d"))
    assert lines(ctl)[0].startswith("1 0 client connect 10.0.0.1 40000 ")
    data_port = door.factory.policy.data_ports["10.0.0.1"]
    assert data_port.waiting_movers == 1
    door.advance(2)
    assert lines(ctl) == ["1 0 " + TIMEOUT_REPLY]
    assert data_port.waiting_movers == 0
    assert door.factory.policy.ports.in_use == {40000}  # the data port stays for the next open


def test_read_flowing_at_the_deadline_is_cut_without_a_reply(pool, reactor):
    put(pool, reactor, "/d", b"x" * 5000)
    door = Door(pool, reactor, openTimeout=2, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/d"))
    channel, data = connect_data(door, lines(ctl)[0], 1)
    channel.dataReceived(mc.encode_read(100))
    assert data.value().endswith(mc.fin(mc.READ))
    door.advance(2)
    assert data.disconnecting or data.disconnected
    assert lines(ctl) == []
    send(proto, "1 2 client ping")  # dccp's first step in resuming
    assert lines(ctl) == ["1 2 server pong"]


def test_write_flowing_at_the_deadline_is_not_cut(pool, reactor):
    door = Door(pool, reactor, openTimeout=2, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/w", mode="w", extra="-mode=0644 -truncate"))
    channel, data = connect_data(door, lines(ctl)[0], 1)
    channel.dataReceived(mc.encode_write())
    channel.dataReceived(mc.encode_data(b"y" * 1000)[:500])
    door.advance(5)
    assert not data.disconnecting
    assert lines(ctl) == []
    channel.dataReceived(mc.encode_data(b"y" * 1000)[500:])
    channel.dataReceived(mc.encode_close())
    assert lines(ctl) == ["1 0 client ok"]
    with pool.open_read(pool.namespace.lookup("/w", ROOT)) as f:
        assert f.read() == b"y" * 1000


# -- passive port range ----------------------------------------------------------

def test_the_data_port_skips_busy_ports_and_every_open_shares_it(pool, reactor):
    put(pool, reactor, "/d")
    reactor.busy.add(40000)
    door = Door(pool, reactor, portrange="40000:40001")
    first, ctl1 = door.client()
    send(first, open_line(1, "/d"))
    assert lines(ctl1)[0].startswith("1 0 client connect 10.0.0.1 40001 ")
    second, ctl2 = door.client()
    send(second, open_line(1, "/d"))
    assert lines(ctl2)[0].startswith("1 0 client connect 10.0.0.1 40001 ")


def test_a_range_without_a_free_port_fails_the_open_clearly(pool, reactor):
    put(pool, reactor, "/d")
    reactor.busy.update({40000, 40001})
    door = Door(pool, reactor, portrange="40000:40001")
    proto, ctl = door.client()
    send(proto, open_line(1, "/d"))
    assert lines(ctl) == ['1 0 client failed 5 "cannot open a data port: '
                          'no free data port in the passive port range 40000:40001"']
    reactor.busy.discard(40001)  # the port comes free: the next open gets it
    send(proto, open_line(2, "/d"))
    assert lines(ctl)[0].startswith("2 0 client connect 10.0.0.1 40001 ")


# -- check -------------------------------------------------------------------------

@pytest.mark.parametrize("mode, answers", [
    ("fuzzy", {"disk": "ok", "tape": "rc4", "lost": "ok", "missing": "rc4"}),
    ("strict", {"disk": "ok", "tape": "rc4", "lost": "rc4", "missing": "rc4"}),
])
def test_check_strict_and_fuzzy(pool, reactor, mode, answers):
    for state in ("disk", "tape", "lost"):
        put(pool, reactor, "/" + state, state=state)
    door = Door(pool, reactor, check=mode)
    proto, ctl = door.client()
    for sid, (name, answer) in enumerate(answers.items(), 1):
        send(proto, '%d 0 client check "dcap://h/%s" -stagetime=-1 -location=h -uid=0' % (sid, name))
        expected = "%d 0 client ok" % sid if answer == "ok" else \
            '%d 0 client failed 4 "File is not cached"' % sid
        assert lines(ctl) == [expected], name


# -- buffers -------------------------------------------------------------------------

def test_open_options_give_the_transfer_its_buffers(pool, reactor):
    put(pool, reactor, "/d")
    door = Door(pool, reactor, maxSendBufferSize=131072)
    proto, ctl = door.client()
    send(proto, open_line(1, "/d", extra="-send=8388608 -receive=4096"))
    lines(ctl)
    transfer = proto.sessions[1].transfer
    assert (transfer.buffers.send, transfer.buffers.recv) == (128 * KiB, 4096)
    assert transfer.block_size == transfer.buffers.io
