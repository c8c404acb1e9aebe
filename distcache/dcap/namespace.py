"""The DCAP namespace seam: who asks, what an entry is, what may be asked.

The door asks the namespace what a path is and whether a client may do
something with it; the pool keeps the bytes.  Every refusal is a
:class:`~distcache.dcap.errors.DcapError` that already carries the reply
the real dCache door sends, so the door only formats it.

:class:`INamespace` is the seam; ``sql_namespace`` holds its rules in SQL,
``sqlite_namespace`` the embedded engine and ``postgres_namespace`` the shared
engine.  An engine's methods may answer at once or with Deferreds, so
callers go through ``defer.maybeDeferred`` (or the door's ``_then``) where
they can wait.
"""

import enum
import stat as statmod
from dataclasses import dataclass

from zope.interface import Attribute, Interface

from distcache.dcap.names import pnfsid_of

class Access(enum.Enum):
    """What unauthenticated DCAP may do (dCache's anonymous-operations)."""

    NONE = "NONE"
    READONLY = "READONLY"
    FULL = "FULL"


#: The owner of what anonymous clients create (nobody:nogroup).
NOBODY_UID = NOGROUP_GID = 65534


@dataclass(frozen=True)
class Subject:
    """Who asks: the client's ``-uid``/``-gid`` and the door's access level.

    uid 0 passes permission bits (as root does on POSIX) but never the
    access level: a READONLY door lets nobody modify the namespace.

    An anonymous subject (a client whose claimed uid the door does not
    believe) is nobody: it owns nothing and is in no group, so every
    permission check reads the "other" bits; what it creates is owned by
    uid/gid (nobody:nogroup).
    """

    uid: int
    gid: int
    access: Access = Access.FULL
    gids: tuple = ()
    anonymous: bool = False
    user: str = ""  # the account name of a client that logged in; "" for anonymous

    @property
    def superuser(self):
        return self.uid == 0 and not self.anonymous

    def owns(self, uid):
        """True when the subject is the owner uid (never for an anonymous one)."""
        return not self.anonymous and uid == self.uid

    def in_group(self, gid):
        return not self.anonymous and (gid == self.gid or gid in self.gids)


def anonymous_subject(access):
    """The anonymous user with the door's access level."""
    return Subject(NOBODY_UID, NOGROUP_GID, access, anonymous=True)


ROOT = Subject(0, 0, Access.FULL)


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

    def prepare_write(path, subject, mode=0o644, replace=False, overwrite_hint=None):
        """Check that the subject may create (or replace) path: a WriteTicket.

        The file becomes visible only when the pool commits the ticket.
        Existing file without replace: 1 "File is readOnly: <path> exists",
        followed by overwrite_hint (how the caller's user can overwrite); a directory:
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
