"""Cursors are finished and closed before commit, as PyPy's delayed garbage collection needs.

The connection here keeps every cursor alive, as PyPy does until a
collection runs: a statement left half-read then stays active, so COMMIT
fails ("SQL statements in progress") and, outside a transaction, its read
lock blocks other writers ("database is locked").
"""

import sqlite3

import pytest

from distcache.dcap import sqlite_namespace
from distcache.dcap.namespace import ROOT


class HoardingConnection(sqlite3.Connection):
    """Never lets go of a cursor, like an interpreter whose GC has not run yet."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hoard = []

    def execute(self, *args):
        cursor = super().execute(*args)
        self.hoard.append(cursor)
        return cursor


@pytest.fixture
def hoarding(monkeypatch):
    real = sqlite3.connect

    def connect(*args, **kwargs):
        return real(*args, factory=HoardingConnection, **kwargs)

    monkeypatch.setattr(sqlite_namespace.sqlite3, "connect", connect)


def test_every_operation_commits_while_old_cursors_are_still_referenced(tmp_path, hoarding):
    ns = sqlite_namespace.SQLiteNamespace(str(tmp_path), busy_timeout=0.5)
    other = sqlite_namespace.SQLiteNamespace(str(tmp_path), busy_timeout=0.5)
    try:
        ns.mkdir("/d", ROOT)
        ticket = ns.prepare_write("/d/f", ROOT)
        new, _ = ns.commit_write(ticket, 3, 7, "pool1", lambda pnfsid: None)
        ns.lookup("/d/f", ROOT)
        ns.listdir("/d", ROOT)
        list(ns.walk("/", ROOT))
        ns.get(new.pnfsid)
        # reads on one connection leave no lock behind for the other's writes
        other.chmod("/d/f", ROOT, 0o600)
        ns.set_location(new.pnfsid, tape_uri="osm://x/?bfid=1")
        ns.set_staging(new.pnfsid, 42)
        ns.rename("/d/f", "/d/g", ROOT)
        other.unlink("/d/g", ROOT)
        ns.rmdir("/d", ROOT)
        assert [e.path for e in other.walk("/", ROOT)] == ["/"]
    finally:
        ns.close()
        other.close()
