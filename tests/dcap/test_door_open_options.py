"""The open options dCache acts on: -access-latency, -retention-policy, -io-queue, -overwrite.

The door runs on a StringTransport and a MemoryReactorClock over a real
namespace and pool in tmp; the data connections are played by the test.
"""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from distcache.dcap import mover_codec as mc
from distcache.dcap.configsource import Setting
from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import DoorConfig
from distcache.dcap.errors import DcapError
from distcache.dcap.ioqueue import IoQueues, parse_queue
from distcache.dcap.namespace import ROOT, Access
from distcache.dcap.policy import resolve_policy
from distcache.dcap.pool import open_pool

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n'


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path / "root"), fsync=False)
    yield p
    p.namespace.close()


class Client:
    def __init__(self, pool, policy=None, **config):
        config.setdefault("access", Access.FULL)
        config.setdefault("trust_client_uid", ("127.0.0.0/8",))  # the client's uid is believed
        self.reactor = MemoryReactorClock()
        self.factory = DoorFactory(pool, DoorConfig(**config), self.reactor, policy=policy)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        self.send(HELLO)

    def send(self, line):
        self.transport.clear()
        self.proto.dataReceived(line.encode("ascii") + b"\n" if isinstance(line, str) else line)
        return self.transport.value().decode("ascii").splitlines()


def url(path):
    return "dcap://127.0.0.1:22125/" + path.lstrip("/")


def connect(client, line, index=-1):
    """The client's data connection on the index-th port the door opened (line's `connect`)."""
    words = line.split()
    assert words[3] == "connect", line
    port_info = client.reactor.tcpServers[index]
    channel = port_info[1].buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(mc.encode_hello(int(words[0]), words[6].encode("ascii")))
    return channel


def write(client, sid, path, data, options=""):
    [line] = client.send('%d 0 client open "%s" w h 1 -passive %s' % (sid, url(path), options))
    channel = connect(client, line)
    client.transport.clear()
    channel.dataReceived(mc.encode_write() + mc.encode_data(data) + mc.encode_close())
    return client.transport.value().decode("ascii").splitlines()


def put(pool, path, data):
    up = pool.open_write(path, ROOT, 0o644, replace=True)
    up.file.write(data)
    up.commit()


# -- access latency and retention policy ------------------------------------

def test_a_new_file_records_the_latency_and_policy_its_client_asked_for(pool):
    c = Client(pool, allow_access_latency=True, allow_retention_policy=True)
    assert write(c, 1, "/disk-only", b"abc", "-access-latency=online -retention-policy=REPLICA") \
        == ["1 0 client ok"]
    entry = pool.namespace.lookup("/disk-only", ROOT)
    assert (entry.access_latency, entry.retention_policy) == ("ONLINE", "REPLICA")
    assert not entry.flushable
    assert write(c, 2, "/archived", b"x", "-access-latency=NEARLINE -retention-policy=custodial") \
        == ["2 0 client ok"]
    entry = pool.namespace.lookup("/archived", ROOT)
    assert (entry.access_latency, entry.retention_policy) == ("NEARLINE", "CUSTODIAL")
    assert entry.flushable


def test_unknown_values_are_ignored_as_dcache_ignores_them(pool):
    c = Client(pool, allow_access_latency=True, allow_retention_policy=True)
    assert write(c, 1, "/f", b"abc", "-access-latency=SOMETIMES -retention-policy=FOREVER") \
        == ["1 0 client ok"]
    entry = pool.namespace.lookup("/f", ROOT)
    assert (entry.access_latency, entry.retention_policy) == (None, None)
    assert entry.flushable


def test_a_door_that_does_not_allow_them_records_nothing(pool):
    c = Client(pool)
    assert write(c, 1, "/f", b"abc", "-access-latency=ONLINE -retention-policy=REPLICA") \
        == ["1 0 client ok"]
    entry = pool.namespace.lookup("/f", ROOT)
    assert (entry.access_latency, entry.retention_policy) == (None, None)


def test_a_new_version_keeps_its_class_unless_asked_anew(pool):
    c = Client(pool, allow_truncate=True, allow_access_latency=True, allow_retention_policy=True)
    write(c, 1, "/f", b"one", "-access-latency=ONLINE -retention-policy=REPLICA")
    assert write(c, 2, "/f", b"two", "-truncate") == ["2 0 client ok"]
    entry = pool.namespace.lookup("/f", ROOT)
    assert (entry.access_latency, entry.retention_policy) == ("ONLINE", "REPLICA")
    write(c, 3, "/f", b"three", "-truncate -retention-policy=OUTPUT")
    assert pool.namespace.lookup("/f", ROOT).retention_policy == "OUTPUT"


def test_the_pool_refuses_to_flush_a_disk_only_file(tmp_path):
    from twisted.internet.task import Clock

    from distcache.dcap import hsm
    clock = Clock()
    p = open_pool(str(tmp_path / "root"), fsync=False,
                  hsm=hsm.DirectoryTape(str(tmp_path / "tape"), clock))
    c = Client(p, allow_access_latency=True, allow_retention_policy=True)
    write(c, 1, "/f", b"abc", "-access-latency=ONLINE -retention-policy=REPLICA")
    failures = []
    p.flush(p.namespace.lookup("/f", ROOT)).addErrback(failures.append)
    clock.advance(10)
    assert failures and failures[0].check(DcapError)
    assert "ONLINE and REPLICA" in failures[0].value.message
    assert p.namespace.lookup("/f", ROOT).tape_uri is None
    p.namespace.close()


# -- -overwrite ---------------------------------------------------------------

def test_overwrite_replaces_an_existing_file_where_the_door_allows_it(pool):
    put(pool, "/f", b"old")
    c = Client(pool, allow_truncate=True)
    assert write(c, 1, "/f", b"new", "-overwrite") == ["1 0 client ok"]
    with pool.open_read(pool.namespace.lookup("/f", ROOT)) as f:
        assert f.read() == b"new"


def test_overwrite_is_refused_by_a_door_without_allow_truncate(pool):
    put(pool, "/f", b"old")
    c = Client(pool)
    assert c.send('1 0 client open "%s" w h 1 -passive -overwrite' % url("/f")) == [
        '1 0 client failed 1 "File is readOnly: /f exists; this door does not overwrite files'
        ' (its --allow-truncate option allows it)"']


# -- -io-queue -----------------------------------------------------------------

def test_parse_queue():
    assert parse_queue("tape=2") == ("tape", 2)
    for bad in ("tape", "tape=0", "=3", "tape=x", "default=4"):
        with pytest.raises(ValueError):
            parse_queue(bad)


def test_movers_of_a_queue_run_at_most_its_limit(pool):
    put(pool, "/a", b"a" * 10)
    put(pool, "/b", b"b" * 10)
    c = Client(pool, io_queues=(("slow", 1),))
    [first] = c.send('1 0 client open "%s" r h 1 -passive -io-queue=slow' % url("/a"))
    assert " connect " in first
    # the second open of the queue waits: no connect, and status says queued
    assert c.send('2 0 client open "%s" r h 1 -passive -io-queue=slow' % url("/b")) == []
    assert c.send("2 0 client status")[0].endswith("queued(0)\"")
    # an open of another queue (an unknown name: the default queue) is not held up
    [other] = c.send('3 0 client open "%s" r h 1 -passive -io-queue=nosuch' % url("/b"))
    assert " connect " in other
    channel = connect(c, first, 0)
    c.transport.clear()
    channel.dataReceived(mc.encode_read(100) + mc.encode_close())
    lines = c.transport.value().decode("ascii").splitlines()
    assert lines[0] == "1 0 client ok"
    assert len(lines) == 2 and lines[1].startswith("2 0 client connect ")


def test_an_open_still_queued_at_its_deadline_gets_112(pool):
    put(pool, "/a", b"a")
    keep_alive = resolve_policy(explicit={"keepAlive": Setting("1", "--keep-alive")})
    c = Client(pool, policy=keep_alive, io_queues=(("slow", 1),))
    c.factory.policy.start()
    c.send('1 0 client open "%s" r h 1 -passive -io-queue=slow -timeout=-1' % url("/a"))
    c.transport.clear()
    c.proto.dataReceived(('2 0 client open "%s" r h 1 -passive -io-queue=slow -timeout=5\n'
                          % url("/a")).encode("ascii"))
    for _ in range(7):
        c.reactor.advance(1)
    assert '2 0 client failed 112 "User timeout canceled session"' in \
        c.transport.value().decode("ascii").splitlines()
    queue = c.factory.io_queues.queue_for("slow")
    assert queue.running == 1 and not queue.waiting


def test_a_queued_write_that_ends_early_leaves_no_file(pool):
    c = Client(pool, io_queues=(("slow", 1),))
    c.send('1 0 client open "%s" w h 1 -passive -io-queue=slow' % url("/a"))
    assert c.send('2 0 client open "%s" w h 1 -passive -io-queue=slow' % url("/b")) == []
    c.proto.connectionLost(None)
    queue = c.factory.io_queues.queue_for("slow")
    assert queue.running == 0 and not queue.waiting
    import os
    assert os.listdir(pool.incoming_dir) == []


def test_io_queues_fall_back_to_the_default_queue():
    queues = IoQueues({"tape": 2})
    assert queues.queue_for("tape").limit == 2
    assert queues.queue_for("elsewhere").name == "default"
    assert queues.queue_for(None).limit is None
