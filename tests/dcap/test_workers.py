"""Blocking storage work runs off the reactor: a locked database, fsyncs, copies, checksums."""

import os
import sqlite3
import threading
import time
import zlib

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.testing import StringTransport

from distcache.dcap import pool as pool_module
from distcache.dcap.door import DoorConfig, DoorFactory
from distcache.dcap.namespace import ROOT, Access
from distcache.dcap.pool import open_pool
from distcache.dcap.sqlite_namespace import DB_NAME
from distcache.dcap.workers import OffThreadNamespace, ThreadWorkers
from polling import poll_until

HELLO = b'0 0 client hello 0 0 2 47 14 "" -uid=0 -pid=1 -gid=0\n'


def threaded_pool(tmp_path, fsync=False):
    workers = ThreadWorkers(reactor)
    workers.startService()
    return open_pool(str(tmp_path / "root"), fsync=fsync, workers=workers), workers


def shut(pool, workers):
    workers.stopService()
    pool.engine.close()


@pytest_twisted.inlineCallbacks
def test_a_namespace_waiting_on_a_locked_database_does_not_block_the_reactor(tmp_path):
    pool, workers = threaded_pool(tmp_path)
    assert isinstance(pool.namespace, OffThreadNamespace)
    holder = sqlite3.connect(os.path.join(pool.engine.root, DB_NAME), isolation_level=None)
    try:
        # StringTransport's peer is 192.168.1.1: its -uid=0 is believed
        config = DoorConfig(access=Access.FULL, trust_client_uid=("192.168.1.1/32",))
        door = DoorFactory(pool, config, reactor).buildProtocol(None)
        transport = StringTransport()
        door.makeConnection(transport)
        door.dataReceived(HELLO)
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        transport.clear()
        started = time.monotonic()
        door.dataReceived(b'1 0 client mkdir "dcap://h//d" -uid=0\n')
        assert time.monotonic() - started < 1.0  # busy timeout is 10 s
        ticks = []
        beat = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        beat.start(0.05)
        yield task.deferLater(reactor, 0.5, lambda: None)
        door.dataReceived(b"2 0 client ping\n")
        assert transport.value() == b"2 0 server pong\n"  # answered meanwhile
        assert len(ticks) >= 5  # and the reactor kept its beat
        holder.execute("COMMIT")
        yield poll_until(lambda: b"1 0 client ok\n" in transport.value(), timeout=10)
        beat.stop()
        entry = yield pool.namespace.lookup("/d", ROOT)
        assert entry.is_dir
    finally:
        holder.close()
        shut(pool, workers)


@pytest_twisted.inlineCallbacks
def test_commit_syncs_checksums_and_copies_on_worker_threads(tmp_path, monkeypatch):
    pool, workers = threaded_pool(tmp_path, fsync=True)
    seen = {}
    reactor_thread = threading.current_thread()

    def spy(name, real):
        def call(*args, **kwargs):
            seen.setdefault(name, set()).add(threading.current_thread())
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(pool_module.os, "fsync", spy("fsync", os.fsync))
    monkeypatch.setattr(pool_module, "adler32_of_file", spy("adler32", pool_module.adler32_of_file))
    monkeypatch.setattr(pool.engine, "commit_write", spy("commit", pool.engine.commit_write))
    monkeypatch.setattr(pool, "_copy_of", spy("copy", pool._copy_of))
    try:
        upload = yield pool.open_write("/f", ROOT, 0o644)
        upload.file.write(b"first version")
        entry = yield upload.commit()  # no checksum given: the pool computes it
        assert entry.adler32 == zlib.adler32(b"first version")
        upload = yield pool.open_write("/f", ROOT, replace=True, copy_existing=True)
        upload.file.seek(0)
        upload.file.write(b"FIRST")
        entry = yield upload.commit()
        with pool.open_read(entry) as f:
            assert f.read() == b"FIRST version"
        assert set(seen) == {"fsync", "adler32", "commit", "copy"}
        assert all(reactor_thread not in threads for threads in seen.values()), seen
        names = {t.name for threads in seen.values() for t in threads}
        assert any("dcap-database" in n for n in names) and any("dcap-disk" in n for n in names)
    finally:
        shut(pool, workers)


@pytest_twisted.inlineCallbacks
def test_a_checksum_mismatch_at_commit_leaves_the_old_version(tmp_path):
    pool, workers = threaded_pool(tmp_path)
    try:
        upload = yield pool.open_write("/f", ROOT)
        upload.file.write(b"old")
        yield upload.commit()
        upload = yield pool.open_write("/f", ROOT, replace=True)
        upload.file.write(b"new")
        committing = upload.commit(client_adler32=zlib.adler32(b"new") ^ 1)
        upload.abort()  # the data connection dropped: the running commit decides
        failure = None
        try:
            yield committing
        except Exception as e:
            failure = e
        assert failure is not None and failure.rc == 204 and "Checksum mismatch" in failure.message
        entry = yield pool.namespace.lookup("/f", ROOT)
        with pool.open_read(entry) as f:
            assert f.read() == b"old"
        assert os.listdir(pool.incoming_dir) == []
    finally:
        shut(pool, workers)
