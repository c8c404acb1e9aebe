"""The memcache listener on a session store: commands, order, expiry, limits (in memory)."""

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from distcache import memcache, wire
from distcache.counting import CountingStore, StoreCounters
from distcache.memcache_server import MemcacheFactory, StoreUnavailable, store_stats
from distcache.store import SessionStore

NOW = 1_700_000_000.0


def make(allow_flush=False, store=None):
    clock = task.Clock()
    clock.advance(NOW)
    counters = StoreCounters()
    inner = store if store is not None else SessionStore(clock, 100)
    counting = CountingStore(inner, counters)
    factory = MemcacheFactory(counting, clock, store_stats(inner, counters, lambda: 0)
                              if store is None else None, allow_flush=allow_flush)
    return clock, inner, counters, factory


def connect(factory):
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def talk(proto, transport, data):
    transport.clear()
    proto.dataReceived(data)
    return transport.value()


@pytest.fixture
def conn():
    clock, store, counters, factory = make()
    proto, transport = connect(factory)
    return lambda data: talk(proto, transport, data), clock, store, transport


def test_set_get_gets_delete(conn):
    say, clock, store, _ = conn
    assert say(b"set k 0 0 5\r\nhello\r\n") == b"STORED\r\n"
    assert say(b"get k missing\r\n") == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
    cas = memcache.cas_unique(b"hello")
    assert say(b"gets k\r\n") == b"VALUE k 0 5 %d\r\nhello\r\nEND\r\n" % cas
    assert say(b"set k 0 0 2\r\nhi\r\n") == b"STORED\r\n"
    assert say(b"get k\r\n") == b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    assert say(b"delete k\r\n") == b"DELETED\r\n"
    assert say(b"delete k\r\n") == b"NOT_FOUND\r\n"
    assert say(b"get k\r\n") == b"END\r\n"


def test_add_refuses_a_held_key(conn):
    say, *_ = conn
    assert say(b"add k 0 0 1\r\na\r\n") == b"STORED\r\n"
    assert say(b"add k 0 0 1\r\nb\r\n") == b"NOT_STORED\r\n"
    assert say(b"get k\r\n") == b"VALUE k 0 1\r\na\r\nEND\r\n"


def test_the_key_is_the_distcache_session_id(conn):
    say, clock, store, _ = conn
    assert store.add(b"sid-from-distcache", b"DER", 60000) == wire.OK
    assert say(b"get sid-from-distcache\r\n") == b"VALUE sid-from-distcache 0 3\r\nDER\r\nEND\r\n"
    assert say(b"set mc-key 0 0 2\r\nxy\r\n") == b"STORED\r\n"
    assert store.get(b"mc-key") == b"xy"


def test_long_keys_are_stored_under_their_mapped_id(conn):
    say, clock, store, _ = conn
    key = b"mod_ssl-sess:" + b"0123456789ABCDEF" * 4
    assert say(b"set %s 0 300 3\r\nDER\r\n" % key) == b"STORED\r\n"
    assert store.get(memcache.store_id(key)) == b"DER"
    assert say(b"get %s\r\n" % key) == b"VALUE %s 0 3\r\nDER\r\nEND\r\n" % key


def test_exptime_relative_absolute_and_never(conn):
    say, clock, store, _ = conn
    say(b"set rel 0 10 1\r\na\r\n")
    say(b"set abs 0 %d 1\r\nb\r\n" % int(NOW + 20))
    say(b"set never 0 0 1\r\nc\r\n")
    clock.advance(11)
    assert say(b"get rel abs never\r\n") == (
        b"VALUE abs 0 1\r\nb\r\nVALUE never 0 1\r\nc\r\nEND\r\n")
    clock.advance(10)
    assert say(b"get abs never\r\n") == b"VALUE never 0 1\r\nc\r\nEND\r\n"
    clock.advance(wire.MAX_TIMEOUT_MS / 1000)
    assert say(b"get never\r\n") == b"END\r\n"


def test_a_past_exptime_stores_nothing_and_removes_what_was_there(conn):
    say, *_ = conn
    say(b"set k 0 0 1\r\na\r\n")
    assert say(b"set k 0 -1 1\r\nb\r\n") == b"STORED\r\n"
    assert say(b"get k\r\n") == b"END\r\n"
    assert say(b"add k 0 -1 1\r\nb\r\n") == b"STORED\r\n"
    assert say(b"get k\r\n") == b"END\r\n"


def test_touch(conn):
    say, clock, *_ = conn
    say(b"set k 0 5 1\r\na\r\n")
    assert say(b"touch k 100\r\n") == b"TOUCHED\r\n"
    clock.advance(50)
    assert say(b"get k\r\n") == b"VALUE k 0 1\r\na\r\nEND\r\n"
    assert say(b"touch nope 100\r\n") == b"NOT_FOUND\r\n"
    assert say(b"touch k -1\r\n") == b"TOUCHED\r\n"
    assert say(b"get k\r\n") == b"END\r\n"


def test_noreply_is_silent_and_still_applied(conn):
    say, *_ = conn
    assert say(b"set k 0 0 1 noreply\r\na\r\nadd k 0 0 1 noreply\r\nb\r\n") == b""
    assert say(b"get k\r\n") == b"VALUE k 0 1\r\na\r\nEND\r\n"
    assert say(b"delete k noreply\r\n") == b""
    assert say(b"get k\r\n") == b"END\r\n"


def test_errors_keep_the_connection(conn):
    say, clock, store, transport = conn
    big = memcache.VALUE_MAX + 1
    assert say(b"set k 0 0 %d\r\n" % big + b"x" * big + b"\r\n") == memcache.TOO_LARGE
    assert say(b"bogus\r\n") == b"ERROR\r\n"
    assert say(b"set k 0 0 x\r\n") == memcache.BAD_FORMAT
    assert say(b"version\r\n").startswith(b"VERSION ")
    assert not transport.disconnecting


def test_line_too_long_closes(conn):
    say, clock, store, transport = conn
    assert say(b"x" * 5000) == memcache.LINE_TOO_LONG
    assert transport.disconnecting


def test_quit_closes_after_earlier_replies(conn):
    say, clock, store, transport = conn
    assert say(b"set k 0 0 1\r\na\r\nquit\r\nget k\r\n") == b"STORED\r\n"
    assert transport.disconnecting


def test_flush_all_is_refused_unless_allowed(conn):
    say, clock, store, _ = conn
    say(b"set k 0 0 1\r\na\r\n")
    assert say(b"flush_all\r\n") == memcache.FLUSH_DISABLED
    assert len(store) == 1
    *_, factory = make(allow_flush=True)
    proto, transport = connect(factory)
    talk(proto, transport, b"set k 0 0 1\r\na\r\n")
    assert talk(proto, transport, b"flush_all\r\n") == b"OK\r\n"
    assert talk(proto, transport, b"flush_all 10\r\n") == memcache.FLUSH_DELAY
    assert len(factory.store) == 0


def test_stats_carry_memcached_names(conn):
    say, *_ = conn
    say(b"set k 0 0 1\r\na\r\nget k nope\r\ndelete nope\r\n")
    reply = say(b"stats\r\n")
    assert reply.endswith(b"END\r\n")
    stats = dict(line.split(b" ")[1:] for line in reply.split(b"\r\n")
                 if line.startswith(b"STAT "))
    assert stats[b"cmd_get"] == b"2"
    assert stats[b"cmd_set"] == b"1"
    assert stats[b"get_hits"] == b"1"
    assert stats[b"get_misses"] == b"1"
    assert stats[b"curr_items"] == b"1"
    assert stats[b"bytes"] == b"1"
    assert stats[b"delete_misses"] == b"1"
    assert stats[b"curr_connections"] == b"1"
    assert say(b"stats items\r\n") == b"ERROR\r\n"


class LateStore:
    """A store that answers every call with a Deferred, fired by the test."""

    def __init__(self):
        self.calls = []
        self.data = {}

    def _later(self, what, value):
        d = defer.Deferred()
        self.calls.append((what, d, value))
        return d

    def get(self, sid):
        return self._later("get", self.data.get(sid))

    def add(self, sid, data, ms):
        if sid in self.data:
            return self._later("add", wire.ERR_MATCHING_SESSION)
        self.data[sid] = data
        return self._later("add", wire.OK)

    def remove(self, sid):
        return self._later("remove", self.data.pop(sid, None) is not None)

    def have(self, sid):
        return self._later("have", sid in self.data)

    def __len__(self):
        return len(self.data)

    def fire(self, index):
        what, d, value = self.calls[index]
        d.callback(value)


def test_late_answers_keep_request_order():
    store = LateStore()
    *_, factory = make(store=store)
    proto, transport = connect(factory)
    proto.dataReceived(b"set a 0 0 1\r\n1\r\nget a\r\nversion\r\n")
    assert [c[0] for c in store.calls] == ["remove", "add", "get"]
    assert transport.value() == b""
    store.fire(2)
    store.fire(0)
    assert transport.value() == b""
    store.fire(1)
    assert transport.value().startswith(b"STORED\r\nVALUE a 0 1\r\n1\r\nEND\r\nVERSION ")


def test_a_failing_store_answers_server_error_and_keeps_going():
    store = LateStore()
    *_, factory = make(store=store)
    proto, transport = connect(factory)
    proto.dataReceived(b"get a\r\ndelete a\r\n")
    store.calls[0][1].errback(StoreUnavailable("distcache server unavailable"))
    store.fire(1)
    assert transport.value() == (b"SERVER_ERROR distcache server unavailable\r\n"
                                 b"NOT_FOUND\r\n")


def test_later_commands_wait_for_a_touch():
    store = LateStore()
    store.data[b"k"] = b"v"
    *_, factory = make(store=store)
    proto, transport = connect(factory)
    proto.dataReceived(b"touch k 100\r\ndelete k\r\n")
    assert [c[0] for c in store.calls] == ["get"]
    store.fire(0)
    assert [c[0] for c in store.calls] == ["get", "remove", "add"]
    store.fire(1)
    store.fire(2)
    assert [c[0] for c in store.calls] == ["get", "remove", "add", "remove"]
    store.fire(3)
    assert transport.value() == b"TOUCHED\r\nDELETED\r\n"
    assert store.data == {}


def test_a_client_that_pipelines_too_far_is_paused():
    store = LateStore()
    *_, factory = make(store=store)
    proto, transport = connect(factory)
    proto.dataReceived(b"get k\r\n" * proto.max_outstanding)
    assert transport.producerState == "paused"
    for i in range(len(store.calls)):
        store.fire(i)
    assert transport.producerState == "producing"
    assert transport.value().count(b"END\r\n") == proto.max_outstanding


def test_dc_server_options_take_memcache_listeners():
    from twisted.python import usage

    from distcache import server_tap
    options = server_tap.Options()
    options.parseOptions(["--listen", "UNIX:/tmp/x", "--memcache-listen", "IP:127.0.0.1:11211",
                          "--memcache-listen", "tcp:0", "--memcache-flush-all"])
    service = server_tap.makeService(options)
    assert service.memcache_listen == ["IP:127.0.0.1:11211", "tcp:0"]
    assert service.memcache_flush_all
    with pytest.raises(usage.UsageError):
        server_tap.Options().parseOptions(["--listen", "UNIX:/tmp/x", "--memcache-listen", "bad"])
