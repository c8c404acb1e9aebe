"""The mover's DataChannel on a StringTransport, with real pool uploads in tmp."""

import io
import os
import socket
import struct
import zlib

import pytest
from twisted.internet.testing import StringTransport

from distcache.dcap import mover_codec as mc
from distcache.dcap.checksum import BLOCK_SIZE
from distcache.dcap.errors import NotFound
from distcache.dcap.mover import DataChannel
from distcache.dcap.namespace import ROOT
from distcache.dcap import uploadwriter
from distcache.dcap.transfer import TCP_QUICKACK, Transfer
from distcache.dcap.pool import open_pool
from distcache.dcap.dataport import DataPort
from distcache.dcap.mover import HELLO_TIMEOUT
from held_workers import HeldWorkers


def passive_port(transfer, challenge, on_accept, clock=None, hello_timeout=HELLO_TIMEOUT):
    """A data port on which transfer waits under challenge."""
    port = DataPort(clock=clock, hello_timeout=hello_timeout)
    port.expect(transfer, challenge, on_accept)
    return port


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path / "root"), fsync=False)
    yield p
    p.namespace.close()


class Replies:
    """Decode what the mover wrote, block by block."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def _take(self, n):
        out = self.data[self.pos:self.pos + n]
        assert len(out) == n, "reply stream too short"
        self.pos += n
        return out

    def reply(self):
        (n,) = struct.unpack(">i", self._take(4))
        body = self._take(n)
        return struct.unpack_from(">iii", body) + (body[12:],)

    def data_blocks(self):
        (n,) = struct.unpack(">i", self._take(4))
        assert struct.unpack(">i", self._take(n))[0] == mc.DATA
        blocks = []
        while True:
            (size,) = struct.unpack(">i", self._take(4))
            if size == -1:
                return blocks
            blocks.append(self._take(size))

    def done(self):
        return self.pos == len(self.data)


def channel_for(transfer):
    ch = DataChannel(transfer=transfer)
    t = StringTransport()
    ch.makeConnection(t)
    assert t.value() == struct.pack(">ii", transfer.sid, 0)
    t.clear()
    return ch, t


def read_transfer(payload, sid=2):
    return Transfer(sid, source=io.BytesIO(payload), size=len(payload), label="test")


def test_read_seek_locate_readv_and_close():
    payload = bytes(range(256)) * 40
    tr = read_transfer(payload)
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_read(100) + mc.encode_seek(-10, mc.SEEK_END) + mc.encode_read(100)
                    + mc.encode_read(5) + mc.encode_locate()
                    + mc.encode_seek_and_read(3, mc.SEEK_SET, 4)
                    + mc.encode_readv([(0, 2), (10240 - 1, 5), (5, 3)])
                    + mc.encode_seek(-1, mc.SEEK_SET) + mc.encode_close())
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert b"".join(r.data_blocks()) == payload[:100]
    assert r.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert r.reply() == (mc.ACK, mc.SEEK, 0, struct.pack(">q", 10230))
    assert r.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert b"".join(r.data_blocks()) == payload[-10:]
    assert r.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert r.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert r.data_blocks() == []  # past EOF: no block at all
    assert r.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert r.reply() == (mc.ACK, mc.LOCATE, 0, struct.pack(">qq", 10240, 10240))
    assert r.reply()[:3] == (mc.ACK, mc.SEEK_AND_READ, 0)
    assert b"".join(r.data_blocks()) == payload[3:7]
    assert r.reply()[:3] == (mc.FIN, mc.SEEK_AND_READ, 0)
    assert r.reply()[:3] == (mc.ACK, mc.READV, 0)
    assert b"".join(r.data_blocks()) == payload[0:2] + payload[-1:] + payload[5:8]
    assert r.reply()[:3] == (mc.FIN, mc.READV, 0)
    kind, cmd, rc, rest = r.reply()
    assert (kind, cmd) == (mc.ACK, mc.SEEK) and rc != 0
    assert r.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    assert r.done()
    assert outcome == [None]
    assert t.disconnecting


def test_write_on_a_read_transfer_is_refused_without_data():
    tr = read_transfer(b"abc")
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_write() + mc.encode_close())
    r = Replies(t.value())
    kind, cmd, rc, rest = r.reply()
    assert (kind, cmd) == (mc.ACK, mc.WRITE) and rc != 0
    assert r.reply()[:3] == (mc.ACK, mc.CLOSE, 0)


class PausingTransport(StringTransport):
    """Pauses its producer after every write, as a full socket buffer would."""

    def write(self, data):
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()

    def writeSequence(self, seq):
        self.write(b"".join(seq))


def test_reads_respect_back_pressure():
    payload = b"z" * (3 * BLOCK_SIZE + 17)
    tr = read_transfer(payload)
    ch = DataChannel(transfer=tr)
    t = PausingTransport()
    ch.makeConnection(t)
    t.clear()
    ch.dataReceived(mc.encode_read(len(payload)) + mc.encode_close())
    sizes = [len(t.value())]
    while t.producer is not None:
        t.producer.resumeProducing()
        sizes.append(len(t.value()))
    steps = [b - a for a, b in zip(sizes, sizes[1:])]
    assert max(steps) <= BLOCK_SIZE + 64
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.READ, 0)
    assert b"".join(r.data_blocks()) == payload
    assert r.reply()[:3] == (mc.FIN, mc.READ, 0)
    assert r.reply()[:3] == (mc.ACK, mc.CLOSE, 0)


def write_transfer(pool, path, sid=3, rw=False):
    up = pool.open_write(path, ROOT, 0o644, replace=True, copy_existing=rw)
    size = up.old.size if (rw and up.old is not None) else 0
    return Transfer(sid, upload=up, size=size, label="w " + path)


def test_write_then_close_with_checksum_commits(pool):
    tr = write_transfer(pool, "/new")
    ch, t = channel_for(tr)
    payload = bytes(range(256)) * 1000
    stream = mc.encode_write() + mc.encode_data(payload, block=7000) + mc.encode_close(zlib.adler32(payload))
    for i in range(0, len(stream), 999):
        ch.dataReceived(stream[i:i + 999])
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    entry = pool.namespace.lookup("/new", ROOT)
    assert entry.size == len(payload) and entry.adler32 == zlib.adler32(payload)


def test_seek_and_write_in_an_rw_open_keeps_the_rest(pool):
    up = pool.open_write("/f", ROOT, 0o644)
    up.file.write(b"0123456789")
    up.commit()
    tr = write_transfer(pool, "/f", rw=True)
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_seek_and_write(4, mc.SEEK_SET) + mc.encode_data(b"ab")
                    + mc.encode_seek_and_write(0, mc.SEEK_END) + mc.encode_data(b"XY")
                    + mc.encode_locate() + mc.encode_close(zlib.adler32(b"0123ab6789XY")))
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.SEEK_AND_WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.SEEK_AND_WRITE, 0)
    assert r.reply()[:3] == (mc.ACK, mc.SEEK_AND_WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.SEEK_AND_WRITE, 0)
    assert r.reply() == (mc.ACK, mc.LOCATE, 0, struct.pack(">qq", 12, 12))
    assert r.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    with pool.open_read(pool.namespace.lookup("/f", ROOT)) as f:
        assert f.read() == b"0123ab6789XY"


def test_lost_connection_discards_the_write(pool):
    up = pool.open_write("/keep", ROOT, 0o644)
    up.file.write(b"old")
    up.commit()
    tr = write_transfer(pool, "/keep")
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_write() + mc.DATA_HEADER + struct.pack(">i", 100) + b"partial")
    ch.connectionLost(None)
    assert outcome[0].rc != 0
    with pool.open_read(pool.namespace.lookup("/keep", ROOT)) as f:
        assert f.read() == b"old"


def test_garbage_on_the_data_channel_fails_the_transfer(pool):
    tr = write_transfer(pool, "/g")
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)
    ch.dataReceived(struct.pack(">i", 1 << 30) + b"junk")
    assert t.disconnecting or t.disconnected
    assert outcome and outcome[0] is not None
    with pytest.raises(NotFound):
        pool.namespace.lookup("/g", ROOT)


def test_passive_factory_checks_sid_and_challenge_once():
    tr = read_transfer(b"hi", sid=9)
    accepted = []
    factory = passive_port(tr, "s3cret", lambda: accepted.append(True))
    assert factory.verify(8, b"s3cret") is None
    assert factory.verify(9, b"s3cre") is None
    assert factory.verify(9, b"s3cret") is tr
    assert factory.verify(9, b"s3cret") is None
    assert accepted == [True]
    ch = factory.buildProtocol(None)
    t = StringTransport()
    ch.makeConnection(t)
    assert t.value() == b""
    ch.dataReceived(mc.encode_hello(9, b"wrong!"))
    assert t.disconnecting


def test_a_connect_back_that_arrives_after_the_transfer_ended_is_dropped():
    tr = read_transfer(b"late")
    tr.outcome.addErrback(lambda f: None)
    tr.kill("control connection closed")
    ch = DataChannel(transfer=tr)
    t = StringTransport()
    ch.makeConnection(t)
    assert t.value() == b""
    assert t.disconnecting or t.disconnected


def test_a_block_that_cannot_be_stored_fails_the_close_and_keeps_the_old_version(pool):
    """A failed write (disk full) is reported at FIN, and CLOSE must not commit a file with a hole."""
    up = pool.open_write("/precious", ROOT, 0o644)
    up.file.write(b"old contents")
    up.commit()
    tr = write_transfer(pool, "/precious")
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)
    real_write_at = tr.write_at
    calls = []

    def write_at(offset, data):
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write_at(offset, data)

    tr.write_at = write_at
    payload = b"n" * 3000
    ch.dataReceived(mc.encode_write() + mc.encode_data(payload[:1000]))
    ch.dataReceived(mc.encode_write() + mc.encode_data(payload[1000:2000]))
    ch.dataReceived(mc.encode_write() + mc.encode_data(payload[2000:]))
    ch.dataReceived(mc.encode_close(zlib.adler32(payload)))
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    fin = r.reply()
    assert fin[:2] == (mc.FIN, mc.WRITE) and fin[2] != 0 and b"No space left" in fin[3]
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    fin = r.reply()
    assert fin[:2] == (mc.FIN, mc.WRITE) and fin[2] != 0
    close = r.reply()
    assert close[:2] == (mc.ACK, mc.CLOSE) and close[2] != 0
    assert outcome and outcome[0] is not None
    entry = pool.namespace.lookup("/precious", ROOT)
    assert entry.size == len(b"old contents")
    with pool.open_read(entry) as f:
        assert f.read() == b"old contents"


class _RecordingSocket(socket.socket):
    """A real (unconnected) socket that remembers the options set on it."""

    def __init__(self):
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.options = []

    def setsockopt(self, level, name, value, *rest):
        self.options.append((level, name, value))
        return super().setsockopt(level, name, value, *rest)


class _SocketTransport(StringTransport):
    def __init__(self, sock):
        super().__init__()
        self._sock = sock

    def getHandle(self):
        return self._sock


@pytest.mark.skipif(TCP_QUICKACK is None, reason="TCP_QUICKACK is Linux's")
def test_every_read_of_a_write_is_acknowledged_at_once(pool):
    """A DATA header gets no reply, so its ACK must not wait for the delayed-ACK timer."""
    tr = write_transfer(pool, "/quick")
    sock = _RecordingSocket()
    try:
        t = _SocketTransport(sock)
        ch = DataChannel(transfer=tr)
        ch.makeConnection(t)
        payload = b"x" * 1024
        pieces = [mc.encode_write(), mc.encode_data(payload, block=4096), mc.encode_close(None)]
        for piece in pieces:
            ch.dataReceived(piece)
        quick = [o for o in sock.options if o == (socket.IPPROTO_TCP, TCP_QUICKACK, 1)]
        assert len(quick) == len(pieces)
        assert pool.namespace.lookup("/quick", ROOT).size == len(payload)
    finally:
        sock.close()


def test_blocks_are_written_and_summed_on_the_workers_and_joined_in_order_at_close(pool):
    """Each block's FIN goes out before its bytes are written; CLOSE waits for the writes and their sums."""
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/big")
    ch, t = channel_for(tr)
    block = uploadwriter.BATCH_SIZE // 2 + 5
    payload = bytes(range(251)) * (3 * block // 251 + 1)
    payload = payload[:3 * block] + b"tail"
    stream = (mc.encode_write() + mc.encode_data(payload[:block], block=block)
              + mc.encode_write() + mc.encode_data(payload[block:3 * block], block=block)
              + mc.encode_write() + mc.encode_data(payload[3 * block:], block=block))
    for i in range(0, len(stream), 65536):
        ch.dataReceived(stream[i:i + 65536])
    r = Replies(t.value())
    for _ in range(3):
        assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
        assert r.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    assert len(later.jobs) == 1  # one batch at a time for a file; the rest gathers behind it
    assert all(fn is uploadwriter.write_and_sum for _, fn, _ in later.jobs)
    t.clear()
    ch.dataReceived(mc.encode_close(zlib.adler32(payload)))
    assert t.value() == b""  # the close waits for the writes and their sums
    batches = 0
    while later.jobs:
        batches += sum(1 for _, fn, _ in later.jobs if fn is uploadwriter.write_and_sum)
        later.finish(range(len(later.jobs)))
    assert batches == 2  # the first block alone, then all that gathered behind it
    assert Replies(t.value()).reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    entry = pool.engine.lookup("/big", ROOT)
    assert entry.size == len(payload) and entry.adler32 == zlib.adler32(payload)


def test_a_wrong_client_checksum_is_refused_after_sums_off_the_reactor(pool):
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/bad")
    ch, t = channel_for(tr)
    payload = b"z" * (uploadwriter.BATCH_SIZE * 2)
    ch.dataReceived(mc.encode_write() + mc.encode_data(payload, block=len(payload)))
    t.clear()
    ch.dataReceived(mc.encode_close(zlib.adler32(payload) ^ 1))
    while later.jobs:
        later.finish(range(len(later.jobs)))
    code, cmd, rc, _ = Replies(t.value()).reply()
    assert (code, cmd) == (mc.ACK, mc.CLOSE) and rc != 0
    with pytest.raises(NotFound):
        pool.engine.lookup("/bad", ROOT)


def test_a_write_out_of_order_leaves_the_checksum_to_the_pool(pool):
    """A seek back ends the running sum; the pool sums the file at commit, and it still matches."""
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/seeky")
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_write() + mc.encode_data(b"a" * 3000)
                    + mc.encode_seek_and_write(10, mc.SEEK_SET) + mc.encode_data(b"BBB"))
    final = b"a" * 10 + b"BBB" + b"a" * 2987
    ch.dataReceived(mc.encode_close(zlib.adler32(final)))
    while later.jobs:
        later.finish(range(len(later.jobs)))
    replies = Replies(t.value())
    for _ in range(4):
        replies.reply()
    assert replies.reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    entry = pool.engine.lookup("/seeky", ROOT)
    assert entry.adler32 == zlib.adler32(final)
    with pool.open_read(entry) as f:
        assert f.read() == final


def test_received_bytes_waiting_for_a_slow_disk_pause_reading_until_written(pool):
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/slow")
    ch, t = channel_for(tr)
    payload = bytes(range(256)) * (12 * 4096 + 7)  # ~12 MiB, past the writer's high water
    stream = mc.encode_write() + mc.encode_data(payload, block=1 << 20)
    for i in range(0, len(stream), 256 * 1024):
        ch.dataReceived(stream[i:i + 256 * 1024])
    assert t.producerState == "paused"
    assert tr._writer.queued > uploadwriter.HIGH_WATER
    while later.jobs:
        later.finish(range(len(later.jobs)))
    assert t.producerState == "producing"
    t.clear()
    ch.dataReceived(mc.encode_close(zlib.adler32(payload)))
    while later.jobs:
        later.finish(range(len(later.jobs)))
    assert Replies(t.value()).reply()[:3] == (mc.ACK, mc.CLOSE, 0)
    with pool.open_read(pool.namespace.lookup("/slow", ROOT)) as f:
        assert f.read() == payload


def test_a_disk_failure_after_a_fin_fails_the_next_fin_and_the_close(pool, monkeypatch):
    """The FIN of a block goes out before its bytes are on disk; a write failing later is reported next."""
    up = pool.open_write("/kept", ROOT, 0o644)
    up.file.write(b"old contents")
    up.commit()
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/kept")
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)

    def full(fd, segments):
        raise OSError(28, "No space left on device")

    ch.dataReceived(mc.encode_write() + mc.encode_data(b"first block"))
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    (d, fn, args), = later.jobs
    later.jobs = [(d, full, args)]
    later.finish([0])
    ch.dataReceived(mc.encode_write() + mc.encode_data(b"second"))
    r.data = t.value()
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    fin = r.reply()
    assert fin[:2] == (mc.FIN, mc.WRITE) and fin[2] != 0 and b"No space left" in fin[3]
    ch.dataReceived(mc.encode_close(None))
    r.data = t.value()
    close = r.reply()
    assert close[:2] == (mc.ACK, mc.CLOSE) and close[2] != 0 and r.done()
    assert outcome and outcome[0] is not None
    with pool.open_read(pool.namespace.lookup("/kept", ROOT)) as f:
        assert f.read() == b"old contents"
    assert os.listdir(pool.incoming_dir) == []


def test_reading_back_an_upload_waits_until_its_writes_are_in_the_file(pool):
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/rb")
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_write() + mc.encode_data(b"hello world")
                    + mc.encode_seek_and_read(6, mc.SEEK_SET, 5) + mc.encode_locate())
    r = Replies(t.value())
    assert r.reply()[:3] == (mc.ACK, mc.WRITE, 0)
    assert r.reply()[:3] == (mc.FIN, mc.WRITE, 0)
    assert r.done()  # the read waits for the write; the LOCATE behind it too
    assert t.producerState == "paused"
    later.finish([0])
    r.data = t.value()
    assert r.reply()[:3] == (mc.ACK, mc.SEEK_AND_READ, 0)
    assert b"".join(r.data_blocks()) == b"world"
    assert r.reply()[:3] == (mc.FIN, mc.SEEK_AND_READ, 0)
    assert r.reply() == (mc.ACK, mc.LOCATE, 0, struct.pack(">qq", 11, 11))
    assert t.producerState == "producing"


def test_a_connection_lost_while_a_batch_is_written_discards_the_upload_after_the_batch(pool):
    later = HeldWorkers()
    pool.workers = later
    tr = write_transfer(pool, "/gone")
    outcome = []
    tr.outcome.addCallback(outcome.append)
    ch, t = channel_for(tr)
    ch.dataReceived(mc.encode_write() + mc.encode_data(b"x" * 5000))
    assert len(later.jobs) == 1
    temp = tr.upload.temp_path
    ch.connectionLost(None)
    assert outcome and outcome[0] is not None
    assert os.path.exists(temp) and not tr.upload.file.closed  # the worker still writes into it
    later.finish([0])
    assert not os.path.exists(temp) and tr.upload.file.closed
    with pytest.raises(NotFound):
        pool.namespace.lookup("/gone", ROOT)
