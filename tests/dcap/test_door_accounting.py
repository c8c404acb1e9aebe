"""The door's counters and transfer records, on a MemoryReactorClock and StringTransports.

Transfers run through the door's real mover over a real pool in tmp; the
metrics are read back through the Prometheus collector and parsed with
prometheus_client's own parser, and the records through the transfer log's
file.
"""

import json
import os
import zlib

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock, StringTransport

from distcache.dcap import hsm
from distcache.dcap import mover_codec as mc
from distcache.dcap.configsource import Setting
from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import DoorConfig
from distcache.dcap.namespace import ROOT, Access
from distcache.dcap.policy import resolve_policy
from distcache.dcap.pool import open_pool
from distcache.dcap.transferlog import TransferLog
from distcache.metrics import DoorCollector, registry_of

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n'
STAGE_DELAY = 10
PAYLOAD = b"billing record " * 1000


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def pool(tmp_path, reactor):
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), reactor, stage_delay=STAGE_DELAY)
    p = open_pool(str(tmp_path / "root"), hsm=tape, fsync=False)
    yield p
    p.namespace.close()


class Door:
    """A door on the memory reactor with a transfer log in tmp."""

    def __init__(self, pool, reactor, log_path, **explicit):
        self.reactor = reactor
        policy = resolve_policy(explicit={k: Setting(str(v), "--" + k) for k, v in explicit.items()})
        # StringTransport's peer (192.168.1.1) is trusted: its -uid=0 is believed
        config = DoorConfig(access=Access.FULL, allow_truncate=True,
                            trust_client_uid=("192.168.0.0/16",))
        self.factory = DoorFactory(pool, config, reactor, policy=policy)
        self.factory.transfer_log = TransferLog(str(log_path))
        self.factory.policy.start()
        self.log_path = log_path

    def client(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(HELLO)
        transport.clear()
        return proto, transport

    def records(self):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def metrics(self):
        """{(name, labels): value} of one scrape."""
        text = generate_latest(registry_of(DoorCollector(self.factory))).decode("utf-8")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def door(pool, reactor, tmp_path):
    return Door(pool, reactor, tmp_path / "transfers.log", keepAlive=1)


def opens(metrics, mode, result):
    return metrics[("dcap_door_opens_total", (("mode", mode), ("result", result)))]


def put(pool, reactor, path, data, state="disk"):
    up = pool.open_write(path, ROOT, 0o644, replace=True)
    up.file.write(data)
    entry = up.commit()
    if state == "tape":
        done = []
        pool.flush(entry).addCallback(done.append)
        reactor.advance(0)
        pool.drop(done[0])
    return entry


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
    words = connect_reply.split()
    port = int(words[5])
    factory = [f for p, f, _, _ in door.reactor.tcpServers if p == port][-1]
    channel = factory.buildProtocol(None)
    data = StringTransport()
    channel.makeConnection(data)
    channel.dataReceived(mc.encode_hello(sid, words[6].encode("ascii")))
    return channel, data


def test_a_write_and_a_read_each_leave_one_record_and_their_counts(door, pool, reactor):
    proto, ctl = door.client()
    send(proto, open_line(1, "/f", mode="w", extra="-mode=0644"))
    channel, _ = connect_data(door, lines(ctl)[0], 1)
    channel.dataReceived(mc.encode_write() + mc.encode_data(PAYLOAD))
    during = door.metrics()
    assert during[("dcap_door_transfers_in_progress", ())] == 1
    assert during[("dcap_door_received_bytes_total", ())] == len(PAYLOAD)  # live bytes count
    reactor.advance(2.5)
    channel.dataReceived(mc.encode_close(zlib.adler32(PAYLOAD)))
    assert lines(ctl) == ["1 0 client ok"]
    entry = pool.namespace.lookup("/f", ROOT)

    send(proto, open_line(2, "/f"))
    channel, data = connect_data(door, lines(ctl)[0], 2)
    channel.dataReceived(mc.encode_read(len(PAYLOAD) + 10) + mc.encode_close())
    assert lines(ctl) == ["2 0 client ok"]

    written, read = door.records()
    assert written == {
        "time": "1970-01-01T00:00:02.500+00:00", "transfer": 1, "client": "192.168.1.1:54321",
        "path": "/f", "pnfsid": entry.pnfsid, "mode": "w", "bytes": len(PAYLOAD),
        "bytes_in": len(PAYLOAD), "bytes_out": 0, "duration": 2.5, "result": "ok",
        "adler32": "%08x" % zlib.adler32(PAYLOAD)}
    assert read["mode"] == "r" and read["result"] == "ok" and read["transfer"] == 2
    assert read["pnfsid"] == entry.pnfsid and read["adler32"] == written["adler32"]
    assert read["bytes"] == read["bytes_out"] == len(PAYLOAD) and read["bytes_in"] == 0

    after = door.metrics()
    assert opens(after, "w", "ok") == 1 and opens(after, "r", "ok") == 1
    assert opens(after, "rw", "ok") == 0 and opens(after, "r", "failed") == 0
    assert after[("dcap_door_received_bytes_total", ())] == len(PAYLOAD)
    assert after[("dcap_door_sent_bytes_total", ())] == len(PAYLOAD)
    assert after[("dcap_door_transfers_in_progress", ())] == 0
    assert after[("dcap_door_connections", ())] == 1


def test_a_refused_open_is_a_failed_record_without_a_file(door):
    proto, ctl = door.client()
    send(proto, open_line(1, "/nothere"))
    assert lines(ctl) == ['1 0 client failed 2 "No such file or directory" ENOENT']
    [record] = door.records()
    assert (record["result"], record["rc"], record["error"]) == \
        ("failed", 2, "No such file or directory")
    assert record["pnfsid"] is None and record["adler32"] is None and record["bytes"] == 0
    assert opens(door.metrics(), "r", "failed") == 1


def test_a_write_whose_client_leaves_counts_its_bytes_and_keeps_no_file(door, pool):
    proto, ctl = door.client()
    send(proto, open_line(1, "/gone", mode="w"))
    channel, _ = connect_data(door, lines(ctl)[0], 1)
    channel.dataReceived(mc.encode_write() + mc.encode_data(b"x" * 700))
    proto.connectionLost(None)
    [record] = door.records()
    assert (record["result"], record["bytes_in"], record["pnfsid"]) == ("client_gone", 700, None)
    m = door.metrics()
    assert opens(m, "w", "client_gone") == 1
    assert m[("dcap_door_received_bytes_total", ())] == 700
    assert m[("dcap_door_transfers_in_progress", ())] == 0


def test_stage_waits_and_an_open_timed_out_while_waiting(pool, reactor, tmp_path):
    put(pool, reactor, "/t", b"tape data", state="tape")
    door = Door(pool, reactor, tmp_path / "t.log", openTimeout=3, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/t", extra="-timeout=-1"))
    m = door.metrics()
    assert m[("dcap_door_stage_waits_total", ())] == 1
    assert m[("dcap_door_stage_waiting", ())] == 1
    for _ in range(3):
        reactor.advance(1)
    assert lines(ctl) == ['1 0 client failed 112 "User timeout canceled session"']
    [record] = door.records()
    assert (record["result"], record["rc"], record["duration"]) == ("timeout", 112, 3.0)
    m = door.metrics()
    assert m[("dcap_door_open_timeouts_total", (("phase", "waiting"),))] == 1
    assert m[("dcap_door_open_timeouts_total", (("phase", "reading"),))] == 0
    assert m[("dcap_door_stage_waiting", ())] == 0
    assert opens(m, "r", "timeout") == 1


def test_a_read_cut_at_its_deadline_is_interrupted(pool, reactor, tmp_path):
    entry = put(pool, reactor, "/d", b"x" * 5000)
    door = Door(pool, reactor, tmp_path / "t.log", openTimeout=2, keepAlive=1)
    proto, ctl = door.client()
    send(proto, open_line(1, "/d"))
    channel, _ = connect_data(door, lines(ctl)[0], 1)
    channel.dataReceived(mc.encode_read(100))
    reactor.advance(1)
    reactor.advance(1)
    [record] = door.records()
    assert (record["result"], record["bytes_out"], record["pnfsid"]) == \
        ("interrupted", 100, entry.pnfsid)
    assert record["adler32"] == "%08x" % zlib.adler32(b"x" * 5000)
    m = door.metrics()
    assert m[("dcap_door_open_timeouts_total", (("phase", "reading"),))] == 1
    assert opens(m, "r", "interrupted") == 1


def test_check_answers_are_counted(door, pool, reactor):
    put(pool, reactor, "/disk", b"d")
    put(pool, reactor, "/tape", b"t", state="tape")
    pool.namespace.mkdir("/private", ROOT, 0o700)
    proto, ctl = door.client()
    for sid, name in enumerate(["disk", "tape", "missing", "private/f"], 1):
        send(proto, '%d 0 client check "dcap://h/%s" -stagetime=-1 -location=h -uid=5' % (sid, name))
    out = lines(ctl)
    assert out[0] == "1 0 client ok" and " 4 " in out[1] and " 4 " in out[2]
    assert " 4 " not in out[3], out[3]
    m = door.metrics()
    assert [m[("dcap_door_checks_total", (("result", r),))]
            for r in ("cached", "not_cached", "error")] == [1, 2, 1]
    assert door.records() == []  # a check is not a transfer


# -- the transfer log's file -------------------------------------------------------------

def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_each_record_is_one_flushed_line(tmp_path):
    path = tmp_path / "t.log"
    log = TransferLog(str(path))
    log.write({"transfer": 1, "path": "/a\nb \u00e9"})
    assert read_lines(path) == [{"transfer": 1, "path": "/a\nb \u00e9"}]  # before any close
    log.write({"transfer": 2})
    assert [r["transfer"] for r in read_lines(path)] == [1, 2]
    log.close()


def test_a_moved_log_is_reopened_at_its_path(tmp_path):
    path = tmp_path / "t.log"
    log = TransferLog(str(path))
    log.write({"transfer": 1})
    os.rename(path, tmp_path / "t.log.1")  # logrotate without copytruncate
    log.write({"transfer": 2})
    assert read_lines(tmp_path / "t.log.1") == [{"transfer": 1}]
    assert read_lines(path) == [{"transfer": 2}]
    os.unlink(path)
    log.write({"transfer": 3})
    assert read_lines(path) == [{"transfer": 3}]
    log.close()


def test_an_unwritable_log_is_reported_once_and_retried(tmp_path, capsys):
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        path = tmp_path / "missing-dir" / "t.log"
        log = TransferLog(str(path))
        log.write({"transfer": 1})
        log.write({"transfer": 2})
        os.mkdir(tmp_path / "missing-dir")
        log.write({"transfer": 3})
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [e for e in events if "cannot write" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert read_lines(path) == [{"transfer": 3}]
    log.close()


# -- the door's options ---------------------------------------------------------------------

def parsed(*argv):
    from distcache import dcap_tap
    options = dcap_tap.Options()
    options.parseOptions(list(argv))
    return options


def test_metrics_and_transfer_log_options(tmp_path, monkeypatch):
    import pickle

    from twisted.python import usage

    from distcache import dcap_tap
    monkeypatch.chdir(tmp_path)
    options = parsed("--root", str(tmp_path), "--metrics", "IP:127.0.0.1:9103",
                     "--transfer-log", "transfers.log")
    service = dcap_tap.makeService(options)
    assert service.metrics == "IP:127.0.0.1:9103"
    assert service.transfer_log == str(tmp_path / "transfers.log")  # absolute: twistd may chdir
    assert parsed("--root", str(tmp_path)).get("metrics") is None
    with pytest.raises(usage.UsageError, match="--metrics"):
        parsed("--metrics", "IP:127.0.0.1:xx")
    state = service.__getstate__()
    del state["metrics"], state["transfer_log"]  # a tap file written before these options
    old = dcap_tap.DoorService.__new__(dcap_tap.DoorService)
    old.__setstate__(state)
    assert (old.metrics, old.transfer_log) == (None, None)
    assert pickle.loads(pickle.dumps(service)).transfer_log == service.transfer_log
