"""UploadWriter: batches of received bytes written in order off the reactor, with back-pressure."""

import errno
import os
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from distcache.dcap import uploadwriter
from distcache.dcap.uploadwriter import UploadWriter, write_segments
from distcache.dcap.workers import INLINE
from held_workers import HeldWorkers


@pytest.fixture
def fd(tmp_path):
    fd = os.open(str(tmp_path / "upload"), os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def contents(fd):
    return os.pread(fd, 1 << 24, 0)


def test_writes_below_a_batch_wait_for_the_batch_or_a_flush(fd):
    disk = HeldWorkers()
    w = UploadWriter(fd, disk, batch_size=100)
    w.write(0, b"a" * 40)
    w.write(40, b"b" * 40)
    assert disk.jobs == [] and w.queued == 80 and not w.idle
    w.write(80, b"c" * 30)  # 110 bytes: a full batch goes, as one job
    assert len(disk.jobs) == 1
    assert disk.jobs[0][2][1] == [(0, [b"a" * 40, b"b" * 40, b"c" * 30])]
    w.write(110, b"d" * 10)
    assert len(disk.jobs) == 1  # one job per file at a time
    disk.run_all()
    assert contents(fd) == b"a" * 40 + b"b" * 40 + b"c" * 30
    assert disk.jobs == [] and w.queued == 10  # the tail waits for a batch or a flush
    w.flush()
    disk.run_all()
    assert contents(fd)[110:] == b"d" * 10 and w.idle and w.queued == 0


def test_a_flush_while_a_batch_is_written_sends_the_rest_after_it(fd):
    disk = HeldWorkers()
    w = UploadWriter(fd, disk, batch_size=4)
    w.write(0, b"1234")
    w.write(4, b"56")
    w.flush()
    assert len(disk.jobs) == 1
    disk.run_one()
    assert len(disk.jobs) == 1 and disk.jobs[0][2][1] == [(4, [b"56"])]
    disk.run_one()
    assert contents(fd) == b"123456"


def test_rewrites_of_the_same_bytes_land_in_the_order_they_came(fd):
    disk = HeldWorkers()
    w = UploadWriter(fd, disk, batch_size=1 << 20)
    w.write(0, b"old old old")
    w.write(4, b"NEW")           # a seek back: a second segment in the same batch
    w.write(20, b"far")          # a seek past the end leaves a hole
    w.flush()
    w.write(0, b"X")             # gathered while the batch is being written
    w.flush()
    disk.run_all()
    assert contents(fd) == b"Xld NEW old" + b"\0" * 9 + b"far"


def test_when_idle_fires_once_every_accepted_byte_is_written(fd):
    disk = HeldWorkers()
    w = UploadWriter(fd, disk, batch_size=1 << 20)
    assert w.when_idle() is None
    w.write(0, b"abc")
    fired = []
    w.when_idle().addCallback(fired.append)
    assert fired == [] and len(disk.jobs) == 1  # when_idle flushes
    disk.run_all()
    assert fired == [None] and contents(fd) == b"abc"


def test_a_slow_disk_stops_reading_past_the_high_water_and_resumes_below_the_low(fd):
    disk = HeldWorkers()
    calls = []
    w = UploadWriter(fd, disk, on_pressure=calls.append, batch_size=10, high_water=35, low_water=10)
    for i in range(4):
        w.write(i * 10, bytes([65 + i]) * 10)
    assert w.queued == 40 and calls == [True] and w.pressing
    w.write(40, b"E" * 10)  # what was already received is still taken
    assert calls == [True] and w.queued == 50
    disk.run_one()          # the first batch (10 bytes) is in; 40 wait: still pressing
    assert calls == [True]
    disk.run_one()          # the rest went as one batch and is in
    assert calls == [True, False] and not w.pressing and w.idle
    assert contents(fd) == b"A" * 10 + b"B" * 10 + b"C" * 10 + b"D" * 10 + b"E" * 10


def test_a_failed_write_in_the_middle_of_a_batch_is_kept_and_nothing_after_it_is_written(fd, monkeypatch):
    real = uploadwriter._pwritev or (lambda f, views, off: os.pwrite(f, views[0], off))
    calls = []

    def pwritev(f, views, offset):
        calls.append(offset)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, views[:1], offset)  # one piece a call: the batch goes piece by piece

    monkeypatch.setattr(uploadwriter, "_pwritev", pwritev)
    disk = HeldWorkers()
    errors, pressure = [], []
    w = UploadWriter(fd, disk, on_error=errors.append, on_pressure=pressure.append,
                     batch_size=1 << 20, high_water=25, low_water=5)
    w.write(0, b"a" * 10)
    w.write(10, b"b" * 10)
    w.write(20, b"c" * 10)
    assert pressure == [True]
    idle = w.when_idle()
    w.write(30, b"late")  # gathered behind the failing batch
    disk.run_all()
    assert [e.errno for e in errors] == [errno.ENOSPC] and w.error is errors[0]
    assert contents(fd) == b"a" * 10  # the first piece landed; nothing after the failure
    assert pressure == [True, False] and w.idle and w.queued == 0
    assert idle.called
    w.write(34, b"more")  # after a failure nothing is taken
    w.flush()
    assert disk.jobs == [] and w.idle and len(errors) == 1


def test_an_inline_writer_writes_and_fails_at_once(tmp_path):
    fd = os.open(str(tmp_path / "ro"), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        errors = []
        w = UploadWriter(fd, INLINE, on_error=errors.append, batch_size=4)
        w.write(0, b"abcd")
        assert len(errors) == 1 and errors[0].errno == errno.EBADF and w.idle
    finally:
        os.close(fd)


def test_discard_drops_what_waits_and_lets_the_running_batch_finish(fd):
    disk = HeldWorkers()
    w = UploadWriter(fd, disk, batch_size=3)
    w.write(0, b"abc")
    w.write(3, b"de")
    w.discard()
    idle = w.when_idle()
    assert idle is not None and not idle.called and len(disk.jobs) == 1
    disk.run_all()
    assert idle.called and contents(fd) == b"abc"


def test_short_writes_resume_where_the_file_stopped(fd, monkeypatch):
    real = uploadwriter._pwritev

    def short(f, views, offset):
        first = bytes(views[0])[:7]
        return os.pwrite(f, first, offset)

    monkeypatch.setattr(uploadwriter, "_pwritev", short if real is not None else None)
    pieces = [b"0123456789", b"", b"abcdefghijklmnopqrstu", memoryview(b"xyz!")[1:]]
    write_segments(fd, [(5, pieces)])
    assert contents(fd) == b"\0" * 5 + b"0123456789abcdefghijklmnopqrstuyz!"


def test_without_pwritev_each_piece_goes_with_pwrite(fd, monkeypatch):
    monkeypatch.setattr(uploadwriter, "_pwritev", None)
    write_segments(fd, [(0, [b"abc", b"def"]), (2, [b"X"])])
    assert contents(fd) == b"abXdef"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=0, max_size=120)), max_size=25),
       st.integers(1, 200), st.lists(st.sampled_from(["run", "flush", "none"]), max_size=25))
def test_any_writes_end_as_the_same_bytes_as_writing_them_in_order(tmp_path_factory, writes, batch, steps):
    path = str(tmp_path_factory.mktemp("w") / "f")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        disk = HeldWorkers()
        w = UploadWriter(fd, disk, batch_size=batch, high_water=250, low_water=50)
        expected = bytearray()
        for i, (offset, data) in enumerate(writes):
            w.write(offset, data)
            if data:
                if len(expected) < offset:
                    expected += b"\0" * (offset - len(expected))
                expected[offset:offset + len(data)] = data
            step = steps[i] if i < len(steps) else "none"
            if step == "run" and disk.jobs:
                disk.run_one()
            elif step == "flush":
                w.flush()
        w.when_idle()
        disk.run_all()
        assert w.idle and not w.pressing and w.queued == 0
        assert contents(fd) == bytes(expected)
    finally:
        os.close(fd)


def test_each_batch_is_summed_by_the_worker_that_writes_it_and_reported_in_order(fd):
    disk = HeldWorkers()
    sums = []
    w = UploadWriter(fd, disk, on_batch=lambda n, s: sums.append((n, s)), batch_size=5)
    w.write(0, b"hello")
    w.write(5, b" wor")
    w.write(9, b"ld")
    assert [n for n, _ in sums] == [5] and not sums[0][1].called
    disk.run_one()
    assert sums[0][1].result == zlib.adler32(b"hello")
    assert [n for n, _ in sums] == [5, 6]  # the next batch went as the first came back
    disk.run_one()
    assert sums[1][1].result == zlib.adler32(b" world")
    assert contents(fd) == b"hello world"


def test_an_inline_writer_reports_sums_as_values_and_a_failed_batch_as_none(tmp_path):
    fd = os.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT, 0o600)
    ro = os.open(str(tmp_path / "f"), os.O_RDONLY)
    try:
        sums = []
        w = UploadWriter(fd, INLINE, on_batch=lambda n, s: sums.append((n, s)), batch_size=3)
        w.write(0, b"abc")
        assert sums == [(3, zlib.adler32(b"abc"))]
        failed = []
        bad = UploadWriter(ro, INLINE, on_batch=lambda n, s: failed.append((n, s)), batch_size=3)
        bad.write(0, b"xyz")
        assert failed == [(3, None)] and bad.error is not None
    finally:
        os.close(fd)
        os.close(ro)


def test_a_failed_batch_reports_no_sum(fd, monkeypatch):
    def broken(f, views, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(uploadwriter, "_pwritev", broken)
    monkeypatch.setattr(uploadwriter.os, "pwrite", broken)
    disk = HeldWorkers()
    sums = []
    w = UploadWriter(fd, disk, on_batch=lambda n, s: sums.append((n, s)), batch_size=2)
    w.write(0, b"ab")
    disk.run_all()
    assert len(sums) == 1 and sums[0][1].result is None and w.error.errno == errno.EIO
