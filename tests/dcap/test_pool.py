"""The pool: atomic uploads, versions, reads, unlink, stale uploads."""

import os
import zlib

import pytest

from distcache.dcap.errors import DcapError, NotCached
from distcache.dcap.namespace import ROOT, Subject
from distcache.dcap.checksum import adler32_of_file
from distcache.dcap.pool import Pool, open_pool
from replies import failed_args


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path / "root"))
    p.namespace.mkdir("/pnfs", ROOT)
    yield p
    p.namespace.close()


def write(pool, path, data, **kw):
    upload = pool.open_write(path, ROOT, **kw)
    upload.file.write(data)
    return upload.commit(len(data), zlib.adler32(data))


def read(pool, path):
    entry = pool.namespace.open_read(path, ROOT)
    with pool.open_read(entry) as f:
        return f.read()


def test_file_is_invisible_until_commit(pool):
    upload = pool.open_write("/pnfs/f", ROOT, 0o600)
    upload.file.write(b"hello")
    with pytest.raises(DcapError):
        pool.namespace.lookup("/pnfs/f", ROOT)
    entry = upload.commit()
    assert (entry.size, entry.adler32, entry.mode) == (5, zlib.adler32(b"hello"), 0o600)
    assert entry.state == "disk" and entry.pool == "pool1"
    assert read(pool, "/pnfs/f") == b"hello"
    assert os.listdir(pool.incoming_dir) == []
    assert os.listdir(pool.data_dir) == [entry.pnfsid]


def test_abort_leaves_nothing(pool):
    upload = pool.open_write("/pnfs/f", ROOT)
    upload.file.write(b"partial")
    upload.abort()
    upload.abort()
    with pytest.raises(DcapError):
        pool.namespace.lookup("/pnfs/f", ROOT)
    assert os.listdir(pool.incoming_dir) == []


def test_old_version_survives_until_commit_and_open_readers_keep_it(pool):
    old = write(pool, "/pnfs/f", b"version one")
    reader = pool.open_read(old)
    upload = pool.open_write("/pnfs/f", ROOT, replace=True)
    upload.file.write(b"two")
    assert read(pool, "/pnfs/f") == b"version one"
    new = upload.commit(3)
    assert new.pnfsid != old.pnfsid
    assert read(pool, "/pnfs/f") == b"two"
    assert reader.read() == b"version one"
    reader.close()
    assert not os.path.exists(pool.data_path(old))


def test_interrupted_replace_keeps_old_version(pool):
    write(pool, "/pnfs/f", b"keep me")
    upload = pool.open_write("/pnfs/f", ROOT, replace=True)
    upload.file.write(b"half")
    upload.abort()
    assert read(pool, "/pnfs/f") == b"keep me"


def test_existing_file_without_replace_is_readonly(pool):
    write(pool, "/pnfs/f", b"x")
    with pytest.raises(DcapError) as e:
        pool.open_write("/pnfs/f", ROOT)
    assert failed_args(e.value) == '1 "File is readOnly: /pnfs/f exists"'


def test_size_mismatch_fails_and_discards(pool):
    upload = pool.open_write("/pnfs/f", ROOT)
    upload.file.write(b"abc")
    with pytest.raises(DcapError) as e:
        upload.commit(size=4)
    assert e.value.rc == 204
    with pytest.raises(DcapError):
        pool.namespace.lookup("/pnfs/f", ROOT)
    assert os.listdir(pool.incoming_dir) == []


def test_commit_computes_adler32_and_handles_seeks(pool):
    upload = pool.open_write("/pnfs/f", ROOT)
    upload.file.seek(10)
    upload.file.write(b"tail")
    upload.file.seek(0)
    upload.file.write(b"head")
    entry = upload.commit()
    data = b"head" + b"\0" * 6 + b"tail"
    assert entry.size == 14 and entry.adler32 == zlib.adler32(data)
    assert adler32_of_file(pool.data_path(entry)) == zlib.adler32(data)


def test_rw_open_starts_from_existing_data(pool):
    write(pool, "/pnfs/f", b"0123456789")
    upload = pool.open_write("/pnfs/f", ROOT, replace=True, copy_existing=True)
    upload.file.seek(2)
    upload.file.write(b"xx")
    upload.commit()
    assert read(pool, "/pnfs/f") == b"01xx456789"


def test_commit_fails_when_parent_vanished(pool):
    pool.namespace.mkdir("/pnfs/d", ROOT)
    upload = pool.open_write("/pnfs/d/f", ROOT)
    upload.file.write(b"x")
    pool.namespace.rmdir("/pnfs/d", ROOT)
    with pytest.raises(DcapError):
        upload.commit()
    assert os.listdir(pool.incoming_dir) == []
    assert os.listdir(pool.data_dir) == []


def test_unlink_removes_data(pool):
    entry = write(pool, "/pnfs/f", b"bytes")
    pool.unlink("/pnfs/f", ROOT)
    assert not os.path.exists(pool.data_path(entry))
    with pytest.raises(DcapError) as e:
        pool.unlink("/pnfs", ROOT)
    assert failed_args(e.value) == '17 "Path is a Directory" EISDIR'


def test_is_cached_checks_the_real_disk_copy(pool):
    entry = write(pool, "/pnfs/f", b"data")
    assert pool.is_cached(entry)
    os.truncate(pool.data_path(entry), 2)
    assert not pool.is_cached(entry)
    os.unlink(pool.data_path(entry))
    assert not pool.is_cached(entry)
    with pytest.raises(NotCached) as e:
        pool.open_read(entry)
    assert e.value.rc == 4 and e.value.message == "File is not cached"
    assert not pool.is_cached(pool.namespace.lookup("/pnfs", ROOT))


def test_permissions_apply_to_uploads(pool):
    user = Subject(1000, 1000)
    with pytest.raises(DcapError) as e:
        pool.open_write("/pnfs/f", user)
    assert e.value.rc == 19
    pool.namespace.chmod("/pnfs", ROOT, 0o777)
    upload = pool.open_write("/pnfs/f", user, 0o640)
    upload.file.write(b"mine")
    entry = upload.commit()
    assert (entry.uid, entry.gid, entry.mode) == (1000, 1000, 0o640)


def test_stale_uploads_of_dead_processes_are_swept(tmp_path, pool):
    dead = os.path.join(pool.incoming_dir, "999999999-deadbeef")
    mine = os.path.join(pool.incoming_dir, "%d-live" % os.getpid())
    for path in (dead, mine):
        with open(path, "wb") as f:
            f.write(b"x")
    Pool(pool.directory, pool.namespace)
    assert os.listdir(pool.incoming_dir) == [os.path.basename(mine)]


def test_no_fsync_policy_still_atomic(tmp_path):
    p = open_pool(str(tmp_path / "r"), fsync=False)
    upload = p.open_write("/f", ROOT)
    upload.file.write(b"fast")
    assert upload.commit().size == 4
    p.namespace.close()


def test_commit_failing_after_placement_removes_the_placed_data(pool, monkeypatch):
    upload = pool.open_write("/pnfs/f", ROOT)
    upload.file.write(b"x")
    real = pool.namespace.commit_write

    def fail_after_place(ticket, size, adler32, name, place):
        def place_then_fail(pnfsid):
            place(pnfsid)
            raise OSError("commit lost")
        return real(ticket, size, adler32, name, place_then_fail)

    monkeypatch.setattr(pool.namespace, "commit_write", fail_after_place)
    with pytest.raises(OSError):
        upload.commit()
    assert os.listdir(pool.data_dir) == [] and os.listdir(pool.incoming_dir) == []


def test_the_sweep_removes_data_that_no_entry_owns_and_keeps_the_rest(tmp_path):
    from distcache.dcap.names import pnfsid_of
    pool = open_pool(str(tmp_path / "root"), fsync=False)
    try:
        up = pool.open_write("/kept", ROOT, 0o644)
        up.file.write(b"kept data")
        kept = up.commit()
        orphan = pnfsid_of(kept.ino + 1000)  # placed, then the process died before commit
        with open(os.path.join(pool.data_dir, orphan), "wb") as f:
            f.write(b"x" * 10)
        foreign = os.path.join(pool.data_dir, "README")
        with open(foreign, "w") as f:
            f.write("not a pnfs id: not the pool's")
        assert pool.sweep_orphans() == [orphan]
        assert sorted(os.listdir(pool.data_dir)) == sorted([kept.pnfsid, "README"])
        assert pool.sweep_orphans() == []
        with pool.open_read(pool.namespace.lookup("/kept", ROOT)) as f:
            assert f.read() == b"kept data"
    finally:
        pool.namespace.close()
