"""The namespace in SQL: one ``inode`` table, the same statements for every engine.

The rules live here once (path walks, permission checks, the door's exact
refusals, write tickets), written against four primitives an engine
provides: ``_one``, ``_all``, ``_run`` and ``_insert`` (statements with
``?`` placeholders) and ``_write()``, a transaction in which one writer at
a time changes the tree.  ``sqlite_namespace`` and ``postgres_namespace``
hold the engines; both give the door the same answers.
"""

import time

from twisted.logger import Logger
from zope.interface import implementer

from distcache.dcap.errors import (
    RC_DENIED,
    RC_DIR_EXISTS,
    RC_FILE_EXISTS,
    RC_FILE_NOT_FOUND,
    RC_INVALID_ARGS,
    RC_IS_DIRECTORY,
    RC_NO_ENTRY,
    RC_NOT_DIRECTORY,
    RC_NOT_FILE,
    RC_RMDIR_REFUSED,
    BadName,
    DcapError,
    Denied,
    Exists,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    ReadOnly,
)
from distcache.dcap.names import ino_of, join_path, pnfsid_of, split_path
from distcache.dcap.namespace import ROOT, Access, Entry, INamespace, WriteTicket

log = Logger()

ROOT_INO = 1

COLUMNS = (
    "ino, parent, name, type, mode, uid, gid, size, atime, mtime, ctime, "
    "adler32, on_disk, tape_uri, pool, staging"
)


def now():
    return int(time.time())


@implementer(INamespace)
class SQLNamespace:
    """INamespace over an ``inode`` table; an engine subclass supplies the connection.

    Methods block while the database answers (or another writer holds the
    tree): the door runs them on its database worker (workers.py).
    """

    root = None

    def _insert(self, sql, args=()):
        """Run an INSERT into inode; the new row's ino."""
        raise NotImplementedError

    def exclusive(self):
        """A write transaction as a context: no commit of any process runs inside it."""
        return self._write()

    def _chain(self, parts):
        """The rows from the root along parts, as far as they exist."""
        rows = [self._row_by_ino(ROOT_INO)]
        for part in parts:
            if rows[-1][3] != "d":
                break
            row = self._child(rows[-1][0], part)
            if row is None:
                break
            rows.append(row)
        return rows

    def _make_root(self):
        if self._row_by_ino(ROOT_INO) is None:
            t = self._clock()
            self._run(
                "INSERT INTO inode (ino, parent, name, type, mode, uid, gid,"
                " atime, mtime, ctime) VALUES (?, 0, '', 'd', ?, 0, 0, ?, ?, ?)",
                (ROOT_INO, 0o755, t, t, t),
            )

    # -- copying between engines -----------------------------------------

    def rows(self):
        """Every inode row (tuples in COLUMNS order), parents before children."""
        return self._all("SELECT %s FROM inode ORDER BY ino" % COLUMNS)

    def is_empty(self):
        """True when the tree holds nothing but its root."""
        return self._one("SELECT 1 FROM inode WHERE ino <> ? LIMIT 1", (ROOT_INO,)) is None

    def load_rows(self, rows):
        """Replace the whole tree by rows (from another engine's rows()), ids kept."""
        with self._write():
            self._run("DELETE FROM inode")
            marks = ", ".join("?" * len(COLUMNS.split(",")))
            for row in rows:
                self._run("INSERT INTO inode (%s) VALUES (%s)" % (COLUMNS, marks), tuple(row))
            self._ids_loaded()

    def _ids_loaded(self):
        """After rows were loaded with their own ids: new ids must come after them."""

    # -- rows and paths -------------------------------------------------

    def _row_by_ino(self, ino):
        return self._one(
            "SELECT %s FROM inode WHERE ino = ?" % COLUMNS, (ino,)
        )

    def _child(self, parent, name):
        return self._one(
            "SELECT %s FROM inode WHERE parent = ? AND name = ?" % COLUMNS,
            (parent, name),
        )

    @staticmethod
    def _entry(row, path):
        (ino, parent, name, typ, mode, uid, gid, size, atime, mtime, ctime,
         adler, on_disk, uri, pool, staging) = row
        return Entry(ino, parent, name, path, typ, mode, uid, gid, size, atime,
                     mtime, ctime, adler, bool(on_disk), uri, pool, staging)

    def _resolve(self, parts, subject, missing):
        """Walk parts from the root checking search permission on each directory.

        Returns the Entry, or calls missing(prefix_parts) to build the error
        when a component does not exist (or is not a directory on the way).
        """
        rows = self._chain(parts)
        entry = self._entry(rows[0], "/")
        for i, part in enumerate(parts):
            if not entry.is_dir:
                raise missing(parts[:i])
            _require(entry, subject, 1)
            if i + 1 >= len(rows):
                raise missing(parts[: i + 1])
            entry = self._entry(rows[i + 1], join_path(parts[: i + 1]))
        return entry

    def _lookup(self, path, subject, rc=RC_FILE_NOT_FOUND):
        parts = split_path(path)
        _check_access(subject, write=False)
        return self._resolve(
            parts, subject,
            lambda _p: NotFound(rc, "No such file or directory", "ENOENT"),
        )

    def _parent_of(self, path, subject, missing):
        """(parent Entry, name, parts) for creating or removing path's last name."""
        parts = split_path(path)
        if not parts:
            return None, None, parts
        parent = self._resolve(parts[:-1], subject, lambda _p: missing(parts[:-1]))
        if not parent.is_dir:
            raise missing(parts[:-1])
        return parent, parts[-1], parts

    # -- INamespace -----------------------------------------------------

    def lookup(self, path, subject):
        return self._lookup(path, subject)

    def tape_copies(self):
        """{pnfsid: storage URI or None} of every file, in one query (the pool's survey)."""
        return {pnfsid_of(ino): uri for ino, uri in
                self._all("SELECT ino, tape_uri FROM inode WHERE type = 'f'")}

    def get(self, pnfsid):
        row = self._row_by_ino(ino_of(pnfsid))
        if row is None:
            raise NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")
        return self._entry(row, self._path_of(row))

    def _path_of(self, row):
        names = []
        while row[0] != ROOT_INO:
            names.append(row[2])
            row = self._row_by_ino(row[1])
            if row is None:
                break
        return join_path(reversed(names))

    def mkdir(self, path, subject, mode=0o755):
        _check_access(subject, write=True)
        with self._write():
            parent, name, parts = self._parent_of(
                path, subject,
                lambda p: NotFound(RC_FILE_NOT_FOUND, "Path %s does not exist" % join_path(p)),
            )
            if parent is None or self._child(parent.ino, name) is not None:
                raise Exists(RC_DIR_EXISTS, "Directory exists", "EEXIST")
            _require(parent, subject, 3)
            now = self._clock()
            new_ino = self._insert(
                "INSERT INTO inode (parent, name, type, mode, uid, gid, atime, mtime, ctime)"
                " VALUES (?, ?, 'd', ?, ?, ?, ?, ?, ?)",
                (parent.ino, name, mode & 0o7777, subject.uid, subject.gid, now, now, now),
            )
            self._touch(parent.ino, now)
            entry = self._entry(self._row_by_ino(new_ino), join_path(parts))
        log.debug("mkdir {path} by uid {uid}", path=entry.path, uid=subject.uid)
        return entry

    def rmdir(self, path, subject):
        def refuse(reason):
            return DcapError(RC_RMDIR_REFUSED, reason, "EACCES")

        _check_access(subject, write=True, rc=RC_RMDIR_REFUSED)
        with self._write():
            parent, name, _parts = self._parent_of(
                path, subject,
                lambda _p: NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT"),
            )
            if parent is None:
                raise refuse("Cannot remove the root directory")
            row = self._child(parent.ino, name)
            if row is None:
                raise NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")
            entry = self._entry(row, path)
            if not entry.is_dir:
                raise NotADirectory(RC_RMDIR_REFUSED, "Not a directory", "EACCES")
            _require(parent, subject, 3, rc=RC_RMDIR_REFUSED)
            if self._one(
                "SELECT 1 FROM inode WHERE parent = ? LIMIT 1", (entry.ino,)
            ):
                raise NotEmpty(RC_RMDIR_REFUSED, "Directory is not empty", "EACCES")
            self._run("DELETE FROM inode WHERE ino = ?", (entry.ino,))
            self._touch(parent.ino, self._clock())
        return entry

    def unlink(self, path, subject):
        _check_access(subject, write=True)
        with self._write():
            parent, name, parts = self._parent_of(
                path, subject,
                lambda _p: NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT"),
            )
            if parent is None:
                raise IsADirectory(RC_IS_DIRECTORY, "Path is a Directory", "EISDIR")
            row = self._child(parent.ino, name)
            if row is None:
                raise NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")
            entry = self._entry(row, join_path(parts))
            if entry.is_dir:
                raise IsADirectory(RC_IS_DIRECTORY, "Path is a Directory", "EISDIR")
            _require(parent, subject, 3)
            self._run("DELETE FROM inode WHERE ino = ?", (entry.ino,))
            self._touch(parent.ino, self._clock())
        return entry

    def chmod(self, path, subject, mode):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not (subject.superuser or subject.owns(entry.uid)):
                raise _owner_only(entry, subject, "only its owner or uid 0 may chmod it")
            self._run(
                "UPDATE inode SET mode = ?, ctime = ? WHERE ino = ?",
                (mode & 0o7777, self._clock(), entry.ino),
            )
            return self._entry(self._row_by_ino(entry.ino), entry.path)

    def chown(self, path, subject, uid, gid=None):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not subject.superuser and not (
                uid == entry.uid and subject.owns(uid) and (gid is None or subject.in_group(gid))
            ):
                raise _owner_only(entry, subject, "only uid 0 may change its owner")
            self._run(
                "UPDATE inode SET uid = ?, gid = ?, ctime = ? WHERE ino = ?",
                (uid, entry.gid if gid is None else gid, self._clock(), entry.ino),
            )
            return self._entry(self._row_by_ino(entry.ino), entry.path)

    def chgrp(self, path, subject, gid):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not subject.superuser and not (
                subject.owns(entry.uid) and subject.in_group(gid)
            ):
                raise _owner_only(entry, subject,
                                  "only its owner, to one of its own groups, or uid 0 may chgrp it")
            self._run(
                "UPDATE inode SET gid = ?, ctime = ? WHERE ino = ?",
                (gid, self._clock(), entry.ino),
            )
            return self._entry(self._row_by_ino(entry.ino), entry.path)

    def rename(self, path, new_path, subject):
        _check_access(subject, write=True)

        def gone(_p):
            return NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")

        with self._write():
            src_parent, src_name, src_parts = self._parent_of(path, subject, gone)
            dst_parent, dst_name, dst_parts = self._parent_of(new_path, subject, gone)
            if src_parent is None or dst_parent is None:
                raise Denied(RC_DENIED, "Cannot rename the root directory", "EACCES")
            row = self._child(src_parent.ino, src_name)
            if row is None:
                raise gone(src_parts)
            entry = self._entry(row, join_path(src_parts))
            if src_parts == dst_parts:
                return entry
            if self._child(dst_parent.ino, dst_name) is not None:
                raise Exists(RC_FILE_EXISTS, "File exists", "EEXIST")
            _require(src_parent, subject, 3)
            _require(dst_parent, subject, 3)
            if entry.is_dir and dst_parts[: len(src_parts)] == src_parts:
                raise BadName(
                    RC_INVALID_ARGS, "Cannot move a directory into itself", "EINVAL"
                )
            now = self._clock()
            self._run(
                "UPDATE inode SET parent = ?, name = ?, ctime = ? WHERE ino = ?",
                (dst_parent.ino, dst_name, now, entry.ino),
            )
            self._touch(src_parent.ino, now)
            self._touch(dst_parent.ino, now)
            return self._entry(self._row_by_ino(entry.ino), join_path(dst_parts))

    def listdir(self, path, subject):
        directory = self._lookup(path, subject)
        if not directory.is_dir:
            raise NotADirectory(
                RC_NOT_DIRECTORY, "%s is not a directory" % directory.path, "ENOTDIR"
            )
        _require(directory, subject, 4)
        base = directory.path.rstrip("/")
        rows = self._all(
            "SELECT %s FROM inode WHERE parent = ? ORDER BY name" % COLUMNS,
            (directory.ino,),
        )
        return [self._entry(r, base + "/" + r[2]) for r in rows]

    def open_read(self, path, subject):
        entry = self._lookup(path, subject, rc=RC_NO_ENTRY)
        if not entry.is_file:
            raise IsADirectory(RC_NOT_FILE, "Not a File")
        _require(entry, subject, 4)
        return entry

    def prepare_write(self, path, subject, mode=0o644, replace=False, overwrite_hint=None):
        _check_access(subject, write=True)
        parent, name, parts = self._parent_of(
            path, subject,
            lambda _p: NotFound(RC_NO_ENTRY, "No such file or directory", "ENOENT"),
        )
        if parent is None:
            raise IsADirectory(RC_NOT_FILE, "Not a File")
        row = self._child(parent.ino, name)
        old = None if row is None else self._entry(row, join_path(parts))
        if old is not None:
            if old.is_dir:
                raise IsADirectory(RC_NOT_FILE, "Not a File")
            if not replace:
                raise _read_only(old.path, overwrite_hint)
            _require(old, subject, 2)
            return WriteTicket(old.path, parent.ino, name, old, old.mode, old.uid,
                               old.gid, True)
        _require(parent, subject, 3)
        return WriteTicket(join_path(parts), parent.ino, name, None, mode & 0o7777,
                           subject.uid, subject.gid, replace)

    def commit_write(self, ticket, size, adler32, pool, place_data):
        with self._write():
            if self._row_by_ino(ticket.parent) is None:
                raise NotFound(RC_NO_ENTRY, "No such file or directory", "ENOENT")
            row = self._child(ticket.parent, ticket.name)
            current = None if row is None else self._entry(row, ticket.path)
            if current is not None:
                if current.is_dir:
                    raise IsADirectory(RC_NOT_FILE, "Not a File")
                expected = ticket.old.ino if ticket.old is not None else None
                if not ticket.replace and current.ino != expected:
                    raise _read_only(ticket.path, None)
                self._run("DELETE FROM inode WHERE ino = ?", (current.ino,))
            now = self._clock()
            new_ino = self._insert(
                "INSERT INTO inode (parent, name, type, mode, uid, gid, size, atime,"
                " mtime, ctime, adler32, on_disk, pool)"
                " VALUES (?, ?, 'f', ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (ticket.parent, ticket.name, ticket.mode, ticket.uid, ticket.gid,
                 size, now, now, now, adler32, pool),
            )
            self._touch(ticket.parent, now)
            new = self._entry(self._row_by_ino(new_ino), ticket.path)
            place_data(new.pnfsid)
        return new, current

    def set_location(self, pnfsid, on_disk=None, tape_uri=None, pool=None):
        ino = ino_of(pnfsid)
        with self._write():
            row = self._row_by_ino(ino)
            if row is None:
                raise NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")
            if on_disk is not None:
                self._run(
                    "UPDATE inode SET on_disk = ? WHERE ino = ?", (int(on_disk), ino)
                )
            if tape_uri is not None:
                self._run(
                    "UPDATE inode SET tape_uri = ? WHERE ino = ?", (tape_uri or None, ino)
                )
            if pool is not None:
                self._run("UPDATE inode SET pool = ? WHERE ino = ?", (pool, ino))
            row = self._row_by_ino(ino)
        return self._entry(row, self._path_of(row))

    def set_staging(self, pnfsid, pid):
        ino = ino_of(pnfsid)
        with self._write():
            self._run("UPDATE inode SET staging = ? WHERE ino = ?", (pid, ino))

    def walk(self, path, subject=ROOT):
        top = self._lookup(path, subject)
        yield top
        if not top.is_dir:
            return
        stack = [iter(self.listdir(top.path, subject))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            yield child
            if child.is_dir:
                stack.append(iter(self.listdir(child.path, subject)))

    def _touch(self, ino, now):
        self._run(
            "UPDATE inode SET mtime = ?, ctime = ? WHERE ino = ?", (now, now, ino)
        )


def _check_access(subject, write, rc=RC_DENIED):
    """Refuse what the door's anonymous access level does not allow."""
    if subject.access is Access.NONE or (write and subject.access is not Access.FULL):
        raise Denied(rc, "Permission denied: this door's anonymous access is %s%s; "
                     "--anonymous-access sets it" % (
                         subject.access.value, " (no changes)" if write else ""), "EACCES")


_NEEDS = {1: "search", 2: "write", 3: "write and search", 4: "read"}


def _who(subject):
    if subject.anonymous:
        return "client is anonymous (its uid is not trusted: see --trust-client-uid)"
    if subject.user:
        return "client is user %s (uid %d gid %d)" % (subject.user, subject.uid, subject.gid)
    return "client is uid %d gid %d (anonymous)" % (subject.uid, subject.gid)


def _require(entry, subject, bits, rc=RC_DENIED):
    """Denied, naming the entry's mode and owner and the client, unless _may."""
    if _may(entry, subject, bits):
        return
    raise Denied(rc, "Permission denied: %s is %04o owned by uid %d gid %d, %s, needs %s"
                 % (entry.path, entry.mode, entry.uid, entry.gid, _who(subject),
                    _NEEDS[bits]), "EACCES")


def _owner_only(entry, subject, rule):
    return Denied(RC_DENIED, "Permission denied: %s is owned by uid %d, %s; %s"
                  % (entry.path, entry.uid, _who(subject), rule), "EACCES")


def _read_only(path, hint):
    """An existing file opened for writing without replace: dCache's rc 1 refusal."""
    text = "File is readOnly: %s exists" % path
    return ReadOnly(RC_NOT_FILE, text + ("; " + hint if hint else ""))


def _may(entry, subject, bits):
    """POSIX permission check for bits (4 read, 2 write, 1 search/execute)."""
    if subject.superuser:
        return True
    if subject.owns(entry.uid):
        have = (entry.mode >> 6) & 7
    elif subject.in_group(entry.gid):
        have = (entry.mode >> 3) & 7
    else:
        have = entry.mode & 7
    return have & bits == bits
