"""DCAP return codes and the refusals that carry them.

One name per code: the door, the mover, the namespace, the pool and the
tape back ends all answer with these numbers, and ``dccp`` acts on some of
them (4 means "not cached", 112 a timed-out session), so they must not
drift apart.  The codes are dCache's (its CacheException numbers and the
dcap door's own).

A :class:`DcapError` holds what the door puts after ``failed``: the code,
the message and an optional POSIX name.  Formatting and escaping are
``control.failed``'s job; an error only holds the parts.
"""

from typing import Optional

RC_NOT_FILE = 1
RC_NO_ENTRY = 2
RC_NOT_CACHED = 4
RC_INTERNAL = 5
RC_IS_DIRECTORY = 17
RC_DENIED = 19
RC_DIR_EXISTS = 20
RC_NOT_DIRECTORY = 22
RC_RMDIR_REFUSED = 23
RC_HSM_NOT_ENABLED = 105
RC_TIMEOUT = 112
RC_DISK_IO = 204
RC_BROKEN_ON_TAPE = 243
RC_BAD_COMMAND = 669
RC_FILE_NOT_FOUND = 10001
RC_FILE_EXISTS = 10008
RC_HSM_DELAY = 10013
RC_NOT_REGULAR = 10014
RC_INVALID_ARGS = 10015
RC_NOT_ONLINE = 10019


class DcapError(Exception):
    """A refusal: the parts of the door reply ``failed <rc> "<message>" [POSIX]``."""

    def __init__(self, rc: int, message: str, posix: Optional[str] = None):
        super().__init__(rc, message, posix)
        self.rc = rc
        self.message = message
        self.posix = posix

    def __str__(self):
        """For logs and dcap-admin; the door's reply is ``control.failed``."""
        tail = ", %s" % self.posix if self.posix else ""
        return "%s (rc %d%s)" % (self.message, self.rc, tail)


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


class TransferError(DcapError):
    """A data transfer failed; the door reports its code when the session ends."""



class NoSpace(DcapError):
    """A write that would not fit on the pool, even after dropping what may be dropped."""
