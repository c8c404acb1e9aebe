"""Removing a file whose data another node's pool holds, and deleting data nobody owns."""

import os

import pytest

from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool


@pytest.fixture
def pool(tmp_path):
    p = open_pool(str(tmp_path), fsync=False, name="pool-a")
    yield p
    p.namespace.close()


def store(pool, path, data):
    up = pool.open_write(path, ROOT, 0o644, replace=True)
    up.file.write(data)
    up.commit()
    return pool.namespace.lookup(path, ROOT)


def test_a_file_held_by_another_pool_is_handed_to_it_when_removed(pool):
    entry = store(pool, "/elsewhere", b"data held by pool-b")
    pool.engine.set_location(entry.pnfsid, pool="pool-b")  # as if pool-b had stored it
    asked = []
    pool.discard_elsewhere = asked.append
    pool.unlink("/elsewhere", ROOT)
    assert [(e.pnfsid, e.pool) for e in asked] == [(entry.pnfsid, "pool-b")]
    # this pool deletes nothing of its own for it (here the bytes stand for pool-b's copy)
    assert os.path.exists(pool.data_path(entry))


def test_a_replaced_file_held_by_another_pool_is_handed_to_it(pool):
    old = store(pool, "/replaced", b"first version")
    pool.engine.set_location(old.pnfsid, pool="pool-b")
    asked = []
    pool.discard_elsewhere = asked.append
    new = store(pool, "/replaced", b"second version")
    assert new.pnfsid != old.pnfsid
    assert [e.pnfsid for e in asked] == [old.pnfsid]


def test_a_file_of_this_pool_is_deleted_here_as_before(pool):
    entry = store(pool, "/here", b"local data")
    asked = []
    pool.discard_elsewhere = asked.append
    pool.unlink("/here", ROOT)
    assert asked == [] and not os.path.exists(pool.data_path(entry))


def test_only_data_without_an_owner_is_deleted_on_request(pool):
    owned = store(pool, "/owned", b"still in the namespace")
    orphan = store(pool, "/orphan", b"removed through another door")
    pool.engine.unlink("/orphan", ROOT)  # the namespace entry is gone, the data is not
    assert pool.discard_orphan(owned.pnfsid) is False
    assert os.path.exists(pool.data_path(owned))
    assert pool.discard_orphan(orphan.pnfsid) is True
    assert not os.path.exists(pool.data_path(orphan))
    assert pool.discard_orphan(orphan.pnfsid) is False  # already gone
    assert pool.discard_orphan("not-a-pnfsid") is False
