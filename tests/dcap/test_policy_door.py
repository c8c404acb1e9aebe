"""The live policy of a door: ports, buffers, deadlines, check."""

import socket
from dataclasses import dataclass

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport

from distcache.dcap.doorpolicy import DoorPolicy
from distcache.dcap.policy import KiB, MiB, TransferBuffers, resolve_policy
from distcache.dcap.configsource import ConfigError, Setting
from distcache.dcap.transfer import Transfer
from distcache.dcap.poollist import parse_poollist
from distcache.dcap.portrange import PortRangeExhausted


def policy(**explicit):
    return resolve_policy(explicit={k: Setting(str(v), k) for k, v in explicit.items()},
                          poollist=parse_poollist("pool1 /p maxSendBufferSize=131072\n"))


class BusyReactor(MemoryReactor):
    """listenTCP refuses ports in `busy`, like a port held by another program."""

    def __init__(self, busy=()):
        super().__init__()
        self.busy = set(busy)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port in self.busy:
            raise CannotListenError(interface, port, OSError("in use"))
        return super().listenTCP(port, factory, backlog, interface)


def expect(door, reactor, interface, sid, challenge="c"):
    return door.expect_mover(reactor, interface, Transfer(sid), challenge + str(sid), lambda: None)


def test_the_data_port_is_the_first_free_port_of_the_range_and_shared():
    door = DoorPolicy(policy(portrange="40000:40002"), Clock())
    reactor = BusyReactor(busy={40000})
    waiting = [expect(door, reactor, "127.0.0.1", sid) for sid in range(1, 100)]
    assert {w.getHost().port for w in waiting} == {40001}
    assert [t[0] for t in reactor.tcpServers] == [40001]
    assert door.data_ports["127.0.0.1"].waiting_movers == 99
    for w in waiting:
        w.stopListening()
        w.stopListening()  # a second withdrawal is harmless
    assert door.data_ports["127.0.0.1"].waiting_movers == 0


def test_a_range_with_no_free_port_fails_clearly():
    door = DoorPolicy(policy(portrange="40000:40001"), Clock())
    reactor = BusyReactor(busy={40000, 40001})
    with pytest.raises(PortRangeExhausted) as e:
        expect(door, reactor, "127.0.0.1", 1)
    assert "40000:40001" in str(e.value)


def test_data_port_option_binds_exactly_that_port():
    door = DoorPolicy(policy(portrange="40000:40009", dataport="40005"), Clock())
    reactor = MemoryReactor()
    assert expect(door, reactor, "", 1).getHost().port == 40005
    assert [t[0] for t in reactor.tcpServers] == [40005]
    busy = DoorPolicy(policy(dataport="40005"), Clock())
    with pytest.raises(PortRangeExhausted):
        expect(busy, BusyReactor(busy={40005}), "", 1)


def test_data_port_outside_the_range_is_refused():
    with pytest.raises(ConfigError) as e:
        policy(portrange="40000:40009", dataport="41000")
    assert "dataport" in str(e.value)
    with pytest.raises(ConfigError):
        policy(dataport="0")


def test_without_range_the_system_chooses_and_stop_closes_it():
    door = DoorPolicy(policy(), Clock())
    reactor = MemoryReactor()
    expect(door, reactor, "", 1)
    assert reactor.tcpServers[0][0] == 0
    door.stop()
    assert door.data_ports == {}
    expect(door, reactor, "", 2)  # a door started again listens again
    assert len(reactor.tcpServers) == 2


def test_buffers_for_open_use_the_pools_limits():
    door = DoorPolicy(policy(), Clock(), pool_name="pool1")
    assert door.buffers_for_open({"send": "999999999"}).send == 128 * KiB
    assert door.buffers_for_open({}).recv == 256 * KiB
    other = DoorPolicy(policy(), Clock(), pool_name="elsewhere")
    assert other.buffers_for_open({"send": "999999999"}).send == MiB


@dataclass
class FakeTransfer:
    sid: int
    writable: bool
    buffers: object = None
    watch: object = None


class TcpLikeTransport(StringTransport):
    def __init__(self, sock):
        super().__init__()
        self.sock = sock

    def getHandle(self):
        return self.sock


def test_prepare_sets_buffers_and_starts_the_watch():
    clock = Clock()
    door = DoorPolicy(policy(keepAlive=1, openTimeout=5), clock)
    events = []
    watch = door.watch_open(3, "-1", lambda: events.append("expire"),
                            lambda: events.append("interrupt"))
    s = socket.socket()
    try:
        transfer = FakeTransfer(3, False, TransferBuffers(64 * KiB, 32 * KiB, MiB), watch)
        door.prepare(TcpLikeTransport(s), transfer)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) in (64 * KiB, 128 * KiB)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) in (32 * KiB, 64 * KiB)
    finally:
        s.close()
    door.start()
    clock.advance(5)
    assert events == ["interrupt"]
    door.stop()


def test_client_timeout_overrides_and_keep_alive_is_required():
    clock = Clock()
    door = DoorPolicy(policy(keepAlive=1, openTimeout=50), clock)
    door.start()
    events = []
    door.watch_open(1, "2", lambda: events.append(1), lambda: None)
    door.watch_open(2, "-1", lambda: events.append(2), lambda: None)
    clock.advance(3)
    assert events == [1]
    clock.advance(47)
    assert events == [1, 2]
    door.stop()
    quiet = DoorPolicy(policy(openTimeout=1), clock)
    assert quiet.watch_open(1, "1", lambda: None, lambda: None) is None


def test_check_follows_the_configured_mode(tmp_path):
    @dataclass
    class Entry:
        on_disk: bool
        pool: str = "pool1"
        is_file: bool = True

    class Pool:
        name = "pool1"
        data_dir = str(tmp_path)

        def is_cached(self, entry):
            return False

    assert DoorPolicy(policy(), Clock()).has_disk_copy(Entry(True), [Pool()])
    assert not DoorPolicy(policy(check="strict"), Clock()).has_disk_copy(Entry(True), [Pool()])
