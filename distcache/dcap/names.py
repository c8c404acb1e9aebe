"""Name rules of the namespace: paths, single names and pnfs ids.

Names must survive a quoted control line and libdcap's listing parser,
which cuts a name at its last ``:`` and rejects bytes above 127; a path
must never climb out of the namespace.  Every check raises
:class:`~distcache.dcap.errors.BadName` with the door's reply (rc 10015,
EINVAL).
"""

from distcache.dcap.errors import RC_INVALID_ARGS, BadName

NAME_MAX = 255
PATH_MAX = 2048
FORBIDDEN_NAME_CHARS = frozenset(':"')


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
    """The absolute path of validated components (``/`` for none)."""
    return "/" + "/".join(parts)


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
