"""Flush, drop and stage through the directory tape, on a task.Clock."""

import os

import pytest
from twisted.internet import task

from distcache.dcap import hsm
from distcache.dcap.errors import DcapError, NotCached, StageFailed
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool
from replies import failed_args


@pytest.fixture
def clock():
    return task.Clock()


@pytest.fixture
def pool(tmp_path, clock):
    tape = hsm.DirectoryTape(str(tmp_path / "tape"), clock, stage_delay=30, flush_delay=5)
    p = open_pool(str(tmp_path / "root"), hsm=tape)
    yield p
    p.namespace.close()


def store(pool, path, data):
    upload = pool.open_write(path, ROOT)
    upload.file.write(data)
    return upload.commit()


def result_of(d):
    box = []
    d.addBoth(box.append)
    return box


def flushed_and_dropped(pool, clock, data=b"tape me"):
    entry = store(pool, "/f", data)
    done = result_of(pool.flush(entry))
    clock.advance(5)
    entry = done[0]
    return pool.drop(entry)


def test_flush_waits_its_delay_then_records_the_uri(pool, clock):
    entry = store(pool, "/f", b"abc")
    done = result_of(pool.flush(entry))
    clock.advance(4.9)
    assert done == []
    clock.advance(0.1)
    flushed = done[0]
    assert flushed.state == "disk+tape"
    assert flushed.tape_uri == (
        "osm://tape/?store=dcap&group=default&bfid=%s" % entry.pnfsid)
    assert pool.namespace.lookup("/f", ROOT).tape_uri == flushed.tape_uri


def test_drop_then_stage_brings_the_disk_copy_back(pool, clock):
    tape_only = flushed_and_dropped(pool, clock, b"payload")
    assert tape_only.state == "tape"
    assert not pool.is_cached(tape_only)
    with pytest.raises(NotCached):
        pool.open_read(tape_only)
    first = result_of(pool.stage(tape_only))
    second = result_of(pool.stage(tape_only))
    assert pool.is_staging(tape_only)
    clock.advance(29)
    assert first == [] and second == []
    clock.advance(1)
    assert first[0].state == "disk+tape" and second[0] == first[0]
    assert not pool.is_staging(tape_only)
    with pool.open_read(first[0]) as f:
        assert f.read() == b"payload"


def test_stage_of_a_cached_file_is_immediate(pool, clock):
    entry = store(pool, "/f", b"x")
    assert result_of(pool.stage(entry))[0] == entry


def test_stage_of_a_directory_is_einval(pool):
    root = pool.namespace.lookup("/", ROOT)
    err = result_of(pool.stage(root))[0].value
    assert failed_args(err) == '10014 "path is not a regular file" EINVAL'


def test_stage_fails_clearly_when_the_tape_copy_is_gone(pool, clock, tmp_path):
    tape_only = flushed_and_dropped(pool, clock)
    os.unlink(tmp_path / "tape" / tape_only.pnfsid)
    done = result_of(pool.stage(tape_only))
    clock.advance(30)
    err = done[0].value
    assert isinstance(err, StageFailed) and err.rc == 243
    assert "missing on tape" in err.message
    assert os.listdir(pool.incoming_dir) == []
    assert not pool.is_staging(tape_only)


def test_lost_file_without_tape_copy_fails_at_once(pool):
    entry = store(pool, "/f", b"x")
    os.unlink(pool.data_path(entry))
    err = result_of(pool.stage(entry))[0].value
    assert isinstance(err, StageFailed) and "lost" in err.message


def test_drop_refuses_unflushed_files(pool):
    entry = store(pool, "/f", b"x")
    with pytest.raises(DcapError) as e:
        pool.drop(entry)
    assert "flush" in e.value.message
    assert pool.is_cached(entry)


def test_concurrent_flushes_share_one_copy(pool, clock):
    entry = store(pool, "/f", b"x")
    a = result_of(pool.flush(entry))
    b = result_of(pool.flush(entry))
    clock.advance(5)
    assert a[0] == b[0] and a[0].tape_uri
    again = result_of(pool.flush(a[0]))
    assert again[0] == a[0]


def test_unlink_removes_the_tape_copy(pool, clock, tmp_path):
    entry = flushed_and_dropped(pool, clock)
    pool.unlink("/f", ROOT)
    assert not (tmp_path / "tape" / entry.pnfsid).exists()


def test_replacing_a_file_starts_disk_only(pool, clock):
    flushed_and_dropped(pool, clock)
    upload = pool.open_write("/f", ROOT, replace=True)
    upload.file.write(b"new")
    assert upload.commit().state == "disk"


def test_without_tape_flush_and_stage_fail(tmp_path):
    p = open_pool(str(tmp_path / "r"))
    entry = store(p, "/f", b"x")
    assert "No tertiary storage" in result_of(p.flush(entry))[0].value.message
    p.namespace.set_location(entry.pnfsid, on_disk=False, tape_uri="osm://t/?bfid=1")
    os.unlink(p.data_path(entry))
    assert "No tertiary storage" in result_of(p.stage(entry))[0].value.message
    p.namespace.close()


def test_config_round_trip(tmp_path, clock):
    root = str(tmp_path / "r")
    os.makedirs(root)
    assert hsm.load_config(root, clock) is None
    hsm.save_config(root, "directory", str(tmp_path / "t"), stage_delay=2, flush_delay=1)
    tape = hsm.load_config(root, clock)
    assert isinstance(tape, hsm.DirectoryTape)
    assert (tape.stage_delay, tape.flush_delay) == (2.0, 1.0)
    hsm.save_config(root, "script", "/bin/true", timeout=9, options={"pnfs": "/x"})
    tape = hsm.load_config(root, clock)
    assert isinstance(tape, hsm.ScriptTape)
    assert tape.timeout == 9.0 and tape.options == {"pnfs": "/x"}
    with open(hsm.config_path(root), "w") as f:
        f.write("[tape]\nkind = floppy\npath = /x\n")
    with pytest.raises(ValueError):
        hsm.load_config(root, clock)


def test_a_cancelled_waiter_does_not_disturb_the_others(pool, clock):
    tape_only = flushed_and_dropped(pool, clock)
    impatient = pool.stage(tape_only)
    patient = result_of(pool.stage(tape_only))
    impatient.addErrback(lambda f: None)
    impatient.cancel()
    clock.advance(30)
    assert patient[0].state == "disk+tape"


def test_staging_is_visible_in_the_namespace_while_it_runs(pool, clock):
    tape_only = flushed_and_dropped(pool, clock)
    done = result_of(pool.stage(tape_only))
    during = pool.namespace.get(tape_only.pnfsid)
    assert during.staging == os.getpid()
    other_process_view = open_pool(os.path.dirname(pool.directory))
    assert other_process_view.is_staging(during)
    clock.advance(30)
    after = pool.namespace.get(tape_only.pnfsid)
    assert after.staging is None and not other_process_view.is_staging(after)
    assert done[0].state == "disk+tape"
    other_process_view.namespace.close()


def test_a_dead_stager_is_not_reported(pool, clock):
    tape_only = flushed_and_dropped(pool, clock)
    pool.namespace.set_staging(tape_only.pnfsid, 999999999)
    assert not pool.is_staging(pool.namespace.get(tape_only.pnfsid))


def test_a_file_removed_while_staging_leaves_no_data(pool, clock):
    tape_only = flushed_and_dropped(pool, clock)
    done = result_of(pool.stage(tape_only))
    pool.namespace.unlink("/f", ROOT)
    clock.advance(30)
    assert done[0].value.rc == 10001
    assert os.listdir(pool.data_dir) == [] and os.listdir(pool.incoming_dir) == []
