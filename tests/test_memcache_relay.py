"""dc_client's memcache listener: commands relayed over the shared upstream link."""

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet import task
from twisted.internet.testing import StringTransport

from distcache import memcache
from distcache.memcache_relay import RelayStore, relay_stats
from distcache.memcache_server import MemcacheFactory
from distcache.upstream import ServerLink, UpstreamProtocol
from distcache.server import CacheServerFactory
from distcache.store import SessionStore


class Farm:
    """A memcache connection -> RelayStore -> ServerLink -> a real dc_server protocol."""

    def __init__(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.store = SessionStore(self.clock, 100)
        self.server = CacheServerFactory(self.store, clock=self.clock)
        self.link = ServerLink()
        self.relay = RelayStore(self.link)
        factory = MemcacheFactory(self.relay, self.clock, relay_stats(self.link, self.relay))
        self.relay.front = factory
        self.factory = factory
        self.mc = factory.buildProtocol(None)
        self.mc_transport = StringTransport()
        self.mc.makeConnection(self.mc_transport)
        self.up = None

    def connect(self):
        self.up = UpstreamProtocol(self.link)
        self.up_transport = StringTransport()
        self.up.makeConnection(self.up_transport)
        self.srv = self.server.buildProtocol(None)
        self.srv_transport = StringTransport()
        self.srv.makeConnection(self.srv_transport)

    def pump(self):
        while self.up is not None and (self.up_transport.value() or self.srv_transport.value()):
            requests = self.up_transport.value()
            self.up_transport.clear()
            if requests:
                self.srv.dataReceived(requests)
            replies = self.srv_transport.value()
            self.srv_transport.clear()
            if replies:
                self.up.dataReceived(replies)

    def say(self, data, pump=True):
        self.mc_transport.clear()
        self.mc.dataReceived(data)
        if pump:
            self.pump()
        return self.mc_transport.value()


@pytest.fixture
def farm():
    f = Farm()
    f.connect()
    return f


def test_commands_reach_the_server_store(farm):
    assert farm.say(b"set k 0 60 3\r\nabc\r\n") == b"STORED\r\n"
    assert farm.store.get(b"k") == b"abc"
    assert farm.say(b"add k 0 60 1\r\nx\r\n") == b"NOT_STORED\r\n"
    assert farm.say(b"get k nope\r\n") == b"VALUE k 0 3\r\nabc\r\nEND\r\n"
    assert farm.say(b"touch k 600\r\n") == b"TOUCHED\r\n"
    assert farm.say(b"delete k\r\ndelete k\r\n") == b"DELETED\r\nNOT_FOUND\r\n"
    assert len(farm.store) == 0


def test_large_values_cross_in_several_frames(farm):
    body = bytes(range(256)) * (memcache.VALUE_MAX // 256)
    key = b"mod_ssl-sess:" + b"AB" * 32
    assert farm.say(b"set %s 0 0 %d\r\n" % (key, len(body)) + body + b"\r\n") == b"STORED\r\n"
    assert farm.store.get(memcache.store_id(key)) == body
    assert farm.say(b"get %s\r\n" % key) == memcache.value(key, body) + memcache.END


def test_pipelined_commands_answer_in_order(farm):
    reply = farm.say(b"set a 0 0 1\r\n1\r\nget a\r\nversion\r\ndelete a\r\nget a\r\n")
    assert reply.startswith(b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\nVERSION ")
    assert reply.endswith(b"DELETED\r\nEND\r\n")


def test_server_away_reads_miss_and_writes_fail():
    farm = Farm()  # never connected
    assert farm.say(b"get k\r\n") == b"END\r\n"
    assert farm.say(b"set k 0 0 1\r\na\r\n") == b"SERVER_ERROR distcache server unavailable\r\n"
    assert farm.say(b"delete k\r\n") == b"SERVER_ERROR distcache server unavailable\r\n"
    assert farm.say(b"flush_all\r\n") == memcache.FLUSH_DISABLED
    assert farm.relay.offline == 4  # set is REMOVE then ADD
    stats = farm.say(b"stats\r\n")
    assert b"STAT distcache_upstream_up 0\r\n" in stats


def test_answers_made_at_once_while_away_keep_their_order():
    farm = Farm()
    assert farm.say(b"version\r\nget k\r\nversion\r\n").split(b"\r\n")[:3] == [
        b"VERSION 1.6.0-distcache", b"END", b"VERSION 1.6.0-distcache"]


def test_requests_in_flight_when_the_server_drops(farm):
    assert farm.say(b"get k\r\nset k 0 0 1\r\na\r\n", pump=False) == b""
    farm.up.connectionLost(type("R", (), {"getErrorMessage": lambda self: "gone"})())
    assert farm.mc_transport.value() == (b"END\r\nSERVER_ERROR distcache server connection "
                                         b"lost\r\n")
    farm.connect()
    assert farm.say(b"set k 0 0 1\r\na\r\n") == b"STORED\r\n"


def test_dc_client_options_take_memcache_listeners():
    from distcache import client_tap
    options = client_tap.Options()
    options.parseOptions(["--server", "UNIX:/tmp/x", "--memcache-listen", "IP:127.0.0.1:11211"])
    assert client_tap.makeService(options).memcache_listen == ["IP:127.0.0.1:11211"]


def test_a_full_server_connection_stops_reading_every_memcache_client(farm):
    first = farm.mc_transport
    farm.up.pauseProducing()             # the server stops reading: its send buffer fills
    later = StringTransport()
    farm.factory.buildProtocol(None).makeConnection(later)
    assert first.producerState == later.producerState == "paused"
    assert len(farm.link.locals) == 0    # the relay is not counted as a local connection
    farm.up.resumeProducing()
    assert first.producerState == later.producerState == "producing"
    assert farm.say(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"


def test_a_memcache_client_paused_for_its_own_reasons_stays_paused_after_the_server_drains(farm):
    farm.mc.pauseProducing()             # its own replies are not being read
    farm.up.pauseProducing()
    farm.up.resumeProducing()
    assert farm.mc_transport.producerState == "paused"
    farm.mc.resumeProducing()
    assert farm.mc_transport.producerState == "producing"


def test_losing_a_full_server_connection_lets_the_memcache_clients_be_read_again(farm):
    farm.up.pauseProducing()
    assert farm.mc_transport.producerState == "paused"
    farm.up.connectionLost(Failure(ConnectionDone()))
    assert farm.mc_transport.producerState == "producing"
