"""The embedded namespace: one SQLite file in the state directory.

WAL mode lets several door processes and ``dcap-admin`` on one host share
the file; writers take ``BEGIN IMMEDIATE`` so they serialise instead of
failing, and wait up to the busy timeout for one another.  The rules are
``sql_namespace``'s; this module holds the connection and its transactions.
"""

import os
import sqlite3

from distcache.dcap.sql_namespace import ROOT_INO, SQLNamespace, now

__all__ = ["DB_NAME", "ROOT_INO", "SQLiteNamespace", "open_namespace"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('d', 'f')),
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    adler32 INTEGER,
    on_disk INTEGER NOT NULL DEFAULT 0,
    tape_uri TEXT,
    pool TEXT,
    staging INTEGER,
    UNIQUE (parent, name)
);
CREATE INDEX IF NOT EXISTS inode_tape ON inode (tape_uri) WHERE tape_uri IS NOT NULL;
"""

DB_NAME = "namespace.db"


class SQLiteNamespace(SQLNamespace):
    """The embedded namespace: one SQLite file, shared by the door processes.

    Its methods block (up to busy_timeout while another process writes);
    a door runs them on its single database worker (workers.py), and one
    connection is used by one thread at a time.
    """

    def __init__(self, root, busy_timeout=10.0, clock=now):
        os.makedirs(root, exist_ok=True)
        self.root = root
        self._clock = clock
        self._db = sqlite3.connect(
            os.path.join(root, DB_NAME), timeout=busy_timeout, isolation_level=None,
            check_same_thread=False,  # made here, used on the one database worker
        )
        self._run("PRAGMA journal_mode=WAL")
        self._run("PRAGMA synchronous=NORMAL")
        self._run("PRAGMA busy_timeout=%d" % int(busy_timeout * 1000))
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._run(statement)
            columns = {r[1] for r in self._all("PRAGMA table_info(inode)")}
            if "staging" not in columns:
                self._run("ALTER TABLE inode ADD COLUMN staging INTEGER")
            self._make_root()

    def close(self):
        self._db.close()

    # -- statements -------------------------------------------------------
    #
    # Every statement runs to completion and its cursor is closed at once:
    # an open cursor keeps its statement active (and, outside a
    # transaction, a read lock), so COMMIT fails with "SQL statements in
    # progress" and other connections see "database is locked" wherever
    # cursors are only reclaimed by the garbage collector (PyPy).

    def _run(self, sql, args=()):
        return _run(self._db, sql, args)

    def _insert(self, sql, args=()):
        return _run(self._db, sql, args)

    def _all(self, sql, args=()):
        return _all(self._db, sql, args)

    def _one(self, sql, args=()):
        rows = _all(self._db, sql, args)
        return rows[0] if rows else None

    def _write(self):
        return _Transaction(self._db)

    def _ids_loaded(self):
        pass  # AUTOINCREMENT already counts from the largest id inserted


def _all(db, sql, args=()):
    """Every row of one statement; the cursor is closed before returning."""
    cur = db.execute(sql, args)
    try:
        return cur.fetchall()
    finally:
        cur.close()


def _run(db, sql, args=()):
    """Run one statement to its end; its lastrowid (for an INSERT)."""
    cur = db.execute(sql, args)
    try:
        cur.fetchall()
        return cur.lastrowid
    finally:
        cur.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so concurrent doors serialise their writes.

    Nested use (a write inside another) joins the outer transaction.
    """

    def __init__(self, db):
        self._db = db
        self._outer = False

    def __enter__(self):
        if not self._db.in_transaction:
            _run(self._db, "BEGIN IMMEDIATE")
            self._outer = True
        return self._db

    def __exit__(self, exc_type, exc, tb):
        if self._outer:
            if exc_type is None:
                _run(self._db, "COMMIT")
            else:
                _run(self._db, "ROLLBACK")
        return False


def open_namespace(root):
    """The namespace kept in the state directory root."""
    return SQLiteNamespace(root)
