"""Ending sessions and stopping the door, on a MemoryReactorClock.

A session that ends (its client gone, the door stopping) leaves nothing
behind: no openTimeout watch, no stage wait, no connect-back attempt.  A
stopping door stops listening first, lets live sessions finish within the
grace (the namespace stays open for them), refuses new opens, then tells the
remaining clients ``0 0 server shutdown`` and only then closes its storage.
"""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from distcache import dcap_tap
from distcache.dcap import hsm
from distcache.dcap import mover_codec as mc
from distcache.dcap.configsource import Setting
from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import DoorConfig
from distcache.dcap.namespace import ROOT, Access
from distcache.dcap.policy import resolve_policy
from distcache.dcap.pool import open_pool

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n'
STAGE_DELAY = 10

#: StringTransport's peer (192.168.1.1) is in it: these clients' -uid=0 is believed.
TRUSTED = ("192.168.0.0/16",)


def connect(factory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(HELLO)
    transport.clear()
    return proto, transport


def ask(proto, transport, line):
    transport.clear()
    proto.dataReceived(line.encode("ascii") + b"\n")
    return transport.value().decode("ascii").splitlines()


def store(pool, path, data):
    up = pool.open_write(path, ROOT, 0o644, replace=True)
    up.file.write(data)
    return up.commit()


def data_connection(reactor, connect_line):
    """The client's side of server-passive: connect and present the challenge."""
    words = connect_line.split()
    factory = [f for p, f, _, _ in reactor.tcpServers if p == int(words[5])][-1]
    channel = factory.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(mc.encode_hello(int(words[0]), words[6].encode("ascii")))
    return channel, transport


# -- what an ended session leaves behind -------------------------------------------

@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def tape_pool(tmp_path, reactor):
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), reactor, stage_delay=STAGE_DELAY)
    pool = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False)
    yield pool
    pool.namespace.close()


def on_tape(pool, reactor, path):
    entry = store(pool, path, b"t" * 1000)
    flushed = []
    pool.flush(entry).addCallback(flushed.append)
    reactor.advance(0)
    pool.drop(flushed[0])


def test_control_lost_while_staging_leaves_no_watch_and_no_stage_wait(tape_pool, reactor):
    on_tape(tape_pool, reactor, "/t")
    policy = resolve_policy(explicit={"openTimeout": Setting("60", "--openTimeout"),
                                      "keepAlive": Setting("1", "--keepAlive")})
    factory = DoorFactory(tape_pool, DoorConfig(access=Access.FULL, trust_client_uid=TRUSTED), reactor,
                          policy=policy)
    proto, ctl = connect(factory)
    assert ask(proto, ctl, '1 0 client open "dcap://h/t" r 127.0.0.1 1 -passive -uid=0') == []
    assert 1 in proto.sessions  # staging
    assert len(factory.policy.timeouts) == 1
    waits = [w for waiters in tape_pool._stages.values() for w in waiters]
    assert len(waits) == 1 and not waits[0].called
    proto.connectionLost(None)
    assert len(factory.policy.timeouts) == 0  # the watch (and the dead protocol it holds) is gone
    assert waits[0].called  # the stage wait is cancelled; the recall itself goes on
    reactor.advance(STAGE_DELAY)
    assert tape_pool.is_cached(tape_pool.namespace.lookup("/t", ROOT))
    assert reactor.tcpServers == []  # no mover was started for the gone client


def test_connect_back_attempt_stops_when_its_session_ends(tmp_path, reactor):
    pool = open_pool(str(tmp_path / "root"), fsync=False)
    store(pool, "/f", b"data")
    config = DoorConfig(access=Access.FULL, trust_client_uid=TRUSTED, connect_back=True)
    factory = DoorFactory(pool, config, reactor)
    proto, ctl = connect(factory)
    assert ask(proto, ctl, '1 0 client open "dcap://h/f" r 127.0.0.1 33000 -uid=0') == []
    assert 1 in proto.sessions  # awaiting the mover
    connector = reactor.connectors[-1]
    assert not connector.stoppedConnecting
    proto.connectionLost(None)
    assert connector.stoppedConnecting
    pool.namespace.close()


# -- stopping the door -------------------------------------------------------------------

@pytest.fixture
def service(tmp_path, reactor):
    root = str(tmp_path / "root")
    os.makedirs(root)
    config = DoorConfig(access=Access.FULL, trust_client_uid=TRUSTED, allow_truncate=True,
                        shutdown_grace=20)
    svc = dcap_tap.DoorService("tcp:0:interface=127.0.0.1", root, config, fsync=False,
                               reactor=reactor)
    svc.startService()
    return svc


def stop(service):
    """stopService; the list gets its result once the service has stopped."""
    done = []
    service.stopService().addBoth(lambda r: done.append(None if isinstance(r, list) else r))
    return done


def test_stopping_keeps_storage_open_for_live_sessions_until_they_end(service, reactor):
    factory, pool = service.factory, service.pool
    store(pool, "/f", b"old")
    listener = list(service)[0]
    proto, ctl = connect(factory)
    line = ask(proto, ctl, '1 0 client open "dcap://h/w" w -truncate 127.0.0.1 1 -passive -uid=0')[0]
    channel, data = data_connection(reactor, line)
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"new file"))

    stopped = stop(service)
    assert not stopped
    assert not listener.running and listener.port is None  # no new control connections
    # the namespace still answers the running session's client
    assert ask(proto, ctl, '2 0 client stat "dcap://h/f" -uid=0')[0].startswith("2 0 client stat ")
    # a new open is refused while the door stops
    assert ask(proto, ctl, '3 0 client open "dcap://h/f" r 127.0.0.1 1 -passive -uid=0') == \
        ['3 0 client failed 5 "Door is shutting down"']

    ctl.clear()
    channel.dataReceived(mc.encode_close())  # the write completes and commits
    assert ctl.value().decode("ascii").splitlines() == ["1 0 client ok", "0 0 server shutdown"]
    assert ctl.disconnecting
    assert pool.namespace.lookup("/w", ROOT).size == 8
    assert not stopped  # storage stays open until the connection is gone
    proto.connectionLost(None)
    assert stopped == [None]
    with pytest.raises(Exception):
        pool.namespace.lookup("/f", ROOT)  # closed now


def test_after_the_grace_the_clients_are_told_and_transfers_end(service, reactor):
    factory, pool = service.factory, service.pool
    store(pool, "/f", b"x" * 100)
    proto, ctl = connect(factory)
    idle, idle_ctl = connect(factory)
    line = ask(proto, ctl, '1 0 client open "dcap://h/w" w -truncate 127.0.0.1 1 -passive -uid=0')[0]
    channel, data = data_connection(reactor, line)
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"partial"))
    ctl.clear()
    stopped = stop(service)
    reactor.advance(19)
    assert ctl.value() == b"" and not data.disconnecting
    reactor.advance(1)
    assert ctl.value() == b"0 0 server shutdown\n" and ctl.disconnecting
    assert idle_ctl.value() == b"0 0 server shutdown\n" and idle_ctl.disconnecting
    proto.connectionLost(None)
    assert data.disconnecting or data.disconnected  # the mover is cut
    assert not stopped
    idle.connectionLost(None)
    assert stopped == [None]
    pool2 = open_pool(service.root, fsync=False)
    with pytest.raises(Exception):
        pool2.namespace.lookup("/w", ROOT)  # the cut write was discarded
    pool2.namespace.close()


def test_a_door_with_no_clients_stops_at_once(service, reactor):
    assert stop(service) == [None]
