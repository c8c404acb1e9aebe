"""The DCAP namespace: paths, file metadata, permissions and pnfs ids.

The door asks the namespace what a path is and whether a client may do
something with it; the pool keeps the bytes.  Every refusal is a
:class:`DcapError` that already carries the reply the real dCache door sends
(return code, message, POSIX name), so the door only formats it.

The embedded implementation is :class:`SQLiteNamespace` (one SQLite file in
the state directory, WAL mode, safe for several door processes on one host).
It sits behind :class:`INamespace` so that a network database can replace it.
Its methods answer synchronously; a remote implementation may return
Deferreds, so callers go through ``defer.maybeDeferred`` where they can wait.
"""

import enum
import os
import sqlite3
import stat as statmod
import time
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

log = Logger()

# Return codes of dCache's CacheException and of the dcap door.
RC_NOT_FILE = 1
RC_NO_ENTRY = 2
RC_NOT_CACHED = 4
RC_IS_DIRECTORY = 17
RC_DENIED = 19
RC_DIR_EXISTS = 20
RC_NOT_DIRECTORY = 22
RC_RMDIR_REFUSED = 23
RC_DISK_IO = 204
RC_BROKEN_ON_TAPE = 243
RC_FILE_NOT_FOUND = 10001
RC_FILE_EXISTS = 10008
RC_HSM_DELAY = 10013
RC_NOT_REGULAR = 10014
RC_INVALID_ARGS = 10015

ROOT_INO = 1
NAME_MAX = 255
PATH_MAX = 2048
# Names must survive a quoted control line and libdcap's listing parser,
# which cuts a name at its last ':' and rejects bytes above 127.
FORBIDDEN_NAME_CHARS = frozenset(':"')


class DcapError(Exception):
    """A refusal with the exact door reply: ``failed <rc> "<message>" [POSIX]``."""

    def __init__(self, rc, message, posix=None):
        super().__init__(rc, message, posix)
        self.rc = rc
        self.message = message
        self.posix = posix

    def reply_args(self):
        """The text after ``failed `` in the door's reply (ASCII only)."""
        text = self.message.encode("ascii", "backslashreplace").decode("ascii")
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        text = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
        tail = f" {self.posix}" if self.posix else ""
        return f'{self.rc} "{text}"{tail}'

    def __str__(self):
        return self.reply_args()


class NotFound(DcapError):
    """The path (or a parent of it) does not exist."""


class Exists(DcapError):
    """The target of a create or rename already exists."""


class Denied(DcapError):
    """The client's uid/gid or the door's anonymous access level forbids it."""


class NotADirectory(DcapError):
    """A directory operation was asked of a file."""


class IsADirectory(DcapError):
    """A file operation was asked of a directory."""


class NotEmpty(DcapError):
    """rmdir of a directory that still has entries."""


class ReadOnly(DcapError):
    """An existing file was opened for writing and truncation is not allowed."""


class BadName(DcapError):
    """A path that could escape the namespace or that clients cannot read back."""


class NotCached(DcapError):
    """The file has no disk copy (it is on tape only, or lost)."""


class StageFailed(DcapError):
    """Tertiary storage could not bring the disk copy back."""


class Access(enum.Enum):
    """What unauthenticated DCAP may do (dCache's anonymous-operations)."""

    NONE = "NONE"
    READONLY = "READONLY"
    FULL = "FULL"


@dataclass(frozen=True)
class Subject:
    """Who asks: the client's ``-uid``/``-gid`` and the door's access level.

    uid 0 passes permission bits (as root does on POSIX) but never the
    access level: a READONLY door lets nobody modify the namespace.
    """

    uid: int
    gid: int
    access: Access = Access.FULL
    gids: tuple = ()

    @property
    def superuser(self):
        return self.uid == 0

    def in_group(self, gid):
        return gid == self.gid or gid in self.gids


ROOT = Subject(0, 0, Access.FULL)


def pnfsid_of(ino):
    """A dCache-style 36-hex-digit pnfs id for an inode number."""
    return "%036X" % ino


def ino_of(pnfsid):
    """The inode number of a pnfs id; BadName if it is not one of ours."""
    if not isinstance(pnfsid, str) or len(pnfsid) != 36:
        raise BadName(RC_INVALID_ARGS, "Invalid pnfsid", "EINVAL")
    try:
        return int(pnfsid, 16)
    except ValueError:
        raise BadName(RC_INVALID_ARGS, "Invalid pnfsid", "EINVAL") from None


# States of a file's data, as `dcap-admin states` shows them.
STATE_DISK = "disk"
STATE_DISK_TAPE = "disk+tape"
STATE_TAPE = "tape"
STATE_LOST = "lost"


@dataclass(frozen=True)
class Entry:
    """One namespace object as the door sees it (a snapshot, not a handle)."""

    ino: int
    parent: int
    name: str
    path: str
    type: str  # "d" or "f"
    mode: int  # permission bits only
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    ctime: int
    adler32: object = None  # int, or None when unknown
    on_disk: bool = False
    tape_uri: object = None  # str, or None when never flushed
    pool: object = None  # name of the pool holding the disk copy
    staging: object = None  # pid of the process recalling it from tape, or None

    @property
    def pnfsid(self):
        return pnfsid_of(self.ino)

    @property
    def is_dir(self):
        return self.type == "d"

    @property
    def is_file(self):
        return self.type == "f"

    @property
    def st_mode(self):
        kind = statmod.S_IFDIR if self.is_dir else statmod.S_IFREG
        return kind | self.mode

    @property
    def mode_string(self):
        """The 10-character ``ls -l`` form the stat reply carries."""
        return statmod.filemode(self.st_mode)

    @property
    def state(self):
        """disk, disk+tape, tape or lost (files); "-" for directories."""
        if self.is_dir:
            return "-"
        if self.on_disk:
            return STATE_DISK_TAPE if self.tape_uri else STATE_DISK
        return STATE_TAPE if self.tape_uri else STATE_LOST


def split_path(path):
    """The components of an absolute namespace path, validated.

    ``//`` and ``.`` collapse; ``..``, NUL, control characters, non-ASCII,
    ``:`` and ``"`` are refused with BadName so that no name can climb out
    of the namespace or be unreadable by the client.
    """
    if not isinstance(path, str):
        raise BadName(RC_INVALID_ARGS, "Path is not text", "EINVAL")
    if len(path) > PATH_MAX:
        raise BadName(RC_INVALID_ARGS, "Path too long", "EINVAL")
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        check_name(part)
        parts.append(part)
    return parts


def check_name(name):
    """Refuse a single name the namespace cannot hold safely."""
    if name in ("", ".", ".."):
        raise BadName(RC_INVALID_ARGS, "Invalid name '%s'" % name, "EINVAL")
    if len(name) > NAME_MAX:
        raise BadName(RC_INVALID_ARGS, "Name too long", "EINVAL")
    for c in name:
        o = ord(c)
        if o < 32 or o > 126:
            raise BadName(
                RC_INVALID_ARGS,
                "Invalid character in name (only printable ASCII is allowed)",
                "EINVAL",
            )
        if c in FORBIDDEN_NAME_CHARS or c == "/":
            raise BadName(
                RC_INVALID_ARGS, "Invalid character '%s' in name" % c, "EINVAL"
            )
    return name


def join_path(parts):
    return "/" + "/".join(parts)


def listing_text(entries):
    """libdcap's directory listing: ``<pnfsid>:<d|f>:<size>:<name>\\n`` lines."""
    return b"".join(
        ("%s:%s:%d:%s\n" % (e.pnfsid, "d" if e.is_dir else "f", e.size, e.name)).encode(
            "ascii"
        )
        for e in entries
    )


class INamespace(Interface):
    """The directory tree and file metadata the door serves.

    Paths are absolute, already %-decoded by the door.  Each method checks
    the subject's rights and raises a DcapError carrying the reply for that
    operation.
    """

    root = Attribute("The state directory this namespace lives in (or None).")

    def lookup(path, subject):
        """The Entry at path (stat/lstat). Missing: NotFound 10001 ENOENT."""

    def get(pnfsid):
        """The Entry with this pnfs id, or NotFound; no permission check."""

    def mkdir(path, subject, mode=0o755):
        """Create a directory owned by the subject; returns its Entry.

        Exists (any type): 20 "Directory exists" EEXIST; parent missing:
        10001 "Path <parent> does not exist"; denied: 19 EACCES.
        """

    def rmdir(path, subject):
        """Remove an empty directory; refusals are rc 23 EACCES."""

    def unlink(path, subject):
        """Remove a file's entry and return it (the pool drops its data).

        A directory: 17 "Path is a Directory" EISDIR; denied: 19 EACCES.
        """

    def chmod(path, subject, mode):
        """Set permission bits (owner or root); returns the new Entry."""

    def chown(path, subject, uid, gid=None):
        """Change owner (root only) and optionally group; returns the Entry."""

    def chgrp(path, subject, gid):
        """Change group (root, or the owner to one of their groups)."""

    def rename(path, new_path, subject):
        """Move an entry; an existing target is refused (10008 EEXIST)."""

    def listdir(path, subject):
        """The entries of a directory, sorted by name (no . or ..).

        Not a directory: 22 "<path> is not a directory" ENOTDIR.
        """

    def open_read(path, subject):
        """The Entry of a file the subject may read.

        Missing: 2 ENOENT; a directory: 1 "Not a File"; denied: 19 EACCES.
        """

    def prepare_write(path, subject, mode=0o644, replace=False):
        """Check that the subject may create (or replace) path: a WriteTicket.

        The file becomes visible only when the pool commits the ticket.
        Existing file without replace: 1 "File is readOnly"; a directory:
        1 "Not a File"; parent missing: 2 ENOENT; denied: 19 EACCES.
        """

    def commit_write(ticket, size, adler32, pool, place_data):
        """Make a written file visible atomically; returns (new, old or None).

        place_data(pnfsid) moves the data into the pool under the new id; it
        runs inside the transaction, so a failure there leaves no entry.
        """

    def set_location(pnfsid, on_disk=None, tape_uri=None, pool=None):
        """Record where a file's data lives (disk copy, tape URI); the Entry."""

    def set_staging(pnfsid, pid):
        """Mark a file as being staged by process pid (None: not staging)."""

    def walk(path, subject=ROOT):
        """Every Entry below path (depth first, path order), itself first."""


class WriteTicket:
    """What prepare_write checked, handed back on commit."""

    def __init__(self, path, parent, name, old, mode, uid, gid, replace):
        self.path = path
        self.parent = parent
        self.name = name
        self.old = old
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.replace = replace


_COLUMNS = (
    "ino, parent, name, type, mode, uid, gid, size, atime, mtime, ctime, "
    "adler32, on_disk, tape_uri, pool, staging"
)

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


def _now():
    return int(time.time())


@implementer(INamespace)
class SQLiteNamespace:
    """The embedded namespace: one SQLite file, shared by the door processes."""

    def __init__(self, root, busy_timeout=10.0, clock=_now):
        os.makedirs(root, exist_ok=True)
        self.root = root
        self._clock = clock
        self._db = sqlite3.connect(
            os.path.join(root, DB_NAME), timeout=busy_timeout, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=%d" % int(busy_timeout * 1000))
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(inode)")}
            if "staging" not in columns:
                self._db.execute("ALTER TABLE inode ADD COLUMN staging INTEGER")
            if self._row_by_ino(ROOT_INO) is None:
                now = self._clock()
                self._db.execute(
                    "INSERT INTO inode (ino, parent, name, type, mode, uid, gid,"
                    " atime, mtime, ctime) VALUES (?, 0, '', 'd', ?, 0, 0, ?, ?, ?)",
                    (ROOT_INO, 0o755, now, now, now),
                )

    def close(self):
        self._db.close()

    # -- transactions ---------------------------------------------------

    def _write(self):
        return _Transaction(self._db)

    # -- rows and paths -------------------------------------------------

    def _row_by_ino(self, ino):
        return self._db.execute(
            "SELECT %s FROM inode WHERE ino = ?" % _COLUMNS, (ino,)
        ).fetchone()

    def _child(self, parent, name):
        return self._db.execute(
            "SELECT %s FROM inode WHERE parent = ? AND name = ?" % _COLUMNS,
            (parent, name),
        ).fetchone()

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
        row = self._row_by_ino(ROOT_INO)
        entry = self._entry(row, "/")
        for i, part in enumerate(parts):
            if not entry.is_dir:
                raise missing(parts[:i])
            if not _may(entry, subject, 1):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            row = self._child(entry.ino, part)
            if row is None:
                raise missing(parts[: i + 1])
            entry = self._entry(row, join_path(parts[: i + 1]))
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
            if not _may(parent, subject, 3):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            now = self._clock()
            cur = self._db.execute(
                "INSERT INTO inode (parent, name, type, mode, uid, gid, atime, mtime, ctime)"
                " VALUES (?, ?, 'd', ?, ?, ?, ?, ?, ?)",
                (parent.ino, name, mode & 0o7777, subject.uid, subject.gid, now, now, now),
            )
            self._touch(parent.ino, now)
            entry = self._entry(self._row_by_ino(cur.lastrowid), join_path(parts))
        log.debug("mkdir {path} by uid {uid}", path=entry.path, uid=subject.uid)
        return entry

    def rmdir(self, path, subject):
        def refuse(reason):
            return DcapError(RC_RMDIR_REFUSED, reason, "EACCES")

        if subject.access is not Access.FULL:
            raise Denied(RC_RMDIR_REFUSED, "Permission denied", "EACCES")
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
            if not _may(parent, subject, 3):
                raise Denied(RC_RMDIR_REFUSED, "Permission denied", "EACCES")
            if self._db.execute(
                "SELECT 1 FROM inode WHERE parent = ? LIMIT 1", (entry.ino,)
            ).fetchone():
                raise NotEmpty(RC_RMDIR_REFUSED, "Directory is not empty", "EACCES")
            self._db.execute("DELETE FROM inode WHERE ino = ?", (entry.ino,))
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
            if not _may(parent, subject, 3):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            self._db.execute("DELETE FROM inode WHERE ino = ?", (entry.ino,))
            self._touch(parent.ino, self._clock())
        return entry

    def chmod(self, path, subject, mode):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not (subject.superuser or subject.uid == entry.uid):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            self._db.execute(
                "UPDATE inode SET mode = ?, ctime = ? WHERE ino = ?",
                (mode & 0o7777, self._clock(), entry.ino),
            )
            return self._entry(self._row_by_ino(entry.ino), entry.path)

    def chown(self, path, subject, uid, gid=None):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not subject.superuser and not (
                uid == entry.uid == subject.uid and (gid is None or subject.in_group(gid))
            ):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            self._db.execute(
                "UPDATE inode SET uid = ?, gid = ?, ctime = ? WHERE ino = ?",
                (uid, entry.gid if gid is None else gid, self._clock(), entry.ino),
            )
            return self._entry(self._row_by_ino(entry.ino), entry.path)

    def chgrp(self, path, subject, gid):
        _check_access(subject, write=True)
        with self._write():
            entry = self._lookup(path, subject)
            if not subject.superuser and not (
                entry.uid == subject.uid and subject.in_group(gid)
            ):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            self._db.execute(
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
            if not (_may(src_parent, subject, 3) and _may(dst_parent, subject, 3)):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            if entry.is_dir and dst_parts[: len(src_parts)] == src_parts:
                raise BadName(
                    RC_INVALID_ARGS, "Cannot move a directory into itself", "EINVAL"
                )
            now = self._clock()
            self._db.execute(
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
        if not _may(directory, subject, 4):
            raise Denied(RC_DENIED, "Permission denied", "EACCES")
        base = directory.path.rstrip("/")
        rows = self._db.execute(
            "SELECT %s FROM inode WHERE parent = ? ORDER BY name" % _COLUMNS,
            (directory.ino,),
        ).fetchall()
        return [self._entry(r, base + "/" + r[2]) for r in rows]

    def open_read(self, path, subject):
        entry = self._lookup(path, subject, rc=RC_NO_ENTRY)
        if not entry.is_file:
            raise IsADirectory(RC_NOT_FILE, "Not a File")
        if not _may(entry, subject, 4):
            raise Denied(RC_DENIED, "Permission denied", "EACCES")
        return entry

    def prepare_write(self, path, subject, mode=0o644, replace=False):
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
                raise ReadOnly(RC_NOT_FILE, "File is readOnly")
            if not _may(old, subject, 2):
                raise Denied(RC_DENIED, "Permission denied", "EACCES")
            return WriteTicket(old.path, parent.ino, name, old, old.mode, old.uid,
                               old.gid, True)
        if not _may(parent, subject, 3):
            raise Denied(RC_DENIED, "Permission denied", "EACCES")
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
                    raise ReadOnly(RC_NOT_FILE, "File is readOnly")
                self._db.execute("DELETE FROM inode WHERE ino = ?", (current.ino,))
            now = self._clock()
            cur = self._db.execute(
                "INSERT INTO inode (parent, name, type, mode, uid, gid, size, atime,"
                " mtime, ctime, adler32, on_disk, pool)"
                " VALUES (?, ?, 'f', ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                (ticket.parent, ticket.name, ticket.mode, ticket.uid, ticket.gid,
                 size, now, now, now, adler32, pool),
            )
            self._touch(ticket.parent, now)
            new = self._entry(self._row_by_ino(cur.lastrowid), ticket.path)
            place_data(new.pnfsid)
        return new, current

    def set_location(self, pnfsid, on_disk=None, tape_uri=None, pool=None):
        ino = ino_of(pnfsid)
        with self._write():
            row = self._row_by_ino(ino)
            if row is None:
                raise NotFound(RC_FILE_NOT_FOUND, "No such file or directory", "ENOENT")
            if on_disk is not None:
                self._db.execute(
                    "UPDATE inode SET on_disk = ? WHERE ino = ?", (int(on_disk), ino)
                )
            if tape_uri is not None:
                self._db.execute(
                    "UPDATE inode SET tape_uri = ? WHERE ino = ?", (tape_uri or None, ino)
                )
            if pool is not None:
                self._db.execute("UPDATE inode SET pool = ? WHERE ino = ?", (pool, ino))
            row = self._row_by_ino(ino)
        return self._entry(row, self._path_of(row))

    def set_staging(self, pnfsid, pid):
        ino = ino_of(pnfsid)
        with self._write():
            self._db.execute("UPDATE inode SET staging = ? WHERE ino = ?", (pid, ino))

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
        self._db.execute(
            "UPDATE inode SET mtime = ?, ctime = ? WHERE ino = ?", (now, now, ino)
        )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so concurrent doors serialise their writes.

    Nested use (a write inside another) joins the outer transaction.
    """

    def __init__(self, db):
        self._db = db
        self._outer = False

    def __enter__(self):
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._outer = True
        return self._db

    def __exit__(self, exc_type, exc, tb):
        if self._outer:
            if exc_type is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        return False


def _check_access(subject, write):
    if subject.access is Access.NONE or (write and subject.access is not Access.FULL):
        raise Denied(RC_DENIED, "Permission denied", "EACCES")


def _may(entry, subject, bits):
    """POSIX permission check for bits (4 read, 2 write, 1 search/execute)."""
    if subject.superuser:
        return True
    if subject.uid == entry.uid:
        have = (entry.mode >> 6) & 7
    elif subject.in_group(entry.gid):
        have = (entry.mode >> 3) & 7
    else:
        have = entry.mode & 7
    return have & bits == bits


def open_namespace(root):
    """The namespace kept in the state directory root."""
    return SQLiteNamespace(root)


__all__ = [
    "Access", "BadName", "DcapError", "Denied", "Entry", "Exists", "INamespace",
    "IsADirectory", "NotADirectory", "NotCached", "NotEmpty", "NotFound", "ROOT",
    "ReadOnly", "SQLiteNamespace", "StageFailed", "Subject", "WriteTicket",
    "check_name", "ino_of", "listing_text", "open_namespace",
    "pnfsid_of", "split_path",
]
