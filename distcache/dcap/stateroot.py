"""Where a door keeps its state, found the same way by the door and by dcap-admin.

``--root`` if given, else the environment variable ``DCAP_ROOT``, else ``var/dcap``
below the current directory (the local deployment's).  A door creates its state
directory; dcap-admin, run somewhere else, must not make an empty one by accident.
"""

import os

ENV = "DCAP_ROOT"
RELATIVE_DEFAULT = os.path.join("var", "dcap")


def default_root(environ=os.environ):
    """The state directory when no ``--root`` is given."""
    return environ.get(ENV) or RELATIVE_DEFAULT


class NoStateDirectory(Exception):
    """The default state directory does not exist here."""


def existing_root(root, environ=os.environ):
    """``root`` (None: the default), refusing a default that is not there.

    An explicit ``--root`` or ``DCAP_ROOT`` may name a directory still to be made,
    as a door's first start does; the relative default must already exist.
    """
    if root is not None:
        return root
    root = default_root(environ)
    if environ.get(ENV) or os.path.isdir(root):
        return root
    raise NoStateDirectory(
        "no DCAP state directory at %s; give the door's with --root DIR "
        "(or set %s), or run from the directory the door was started in"
        % (os.path.abspath(root), ENV))


#: What a door writes below its state directory: the namespace database (with
#: SQLite's write-ahead log and shared memory) and the pool's directories.
WRITTEN = ("namespace.db", "namespace.db-wal", "namespace.db-shm",
           "pool", os.path.join("pool", "data"), os.path.join("pool", "incoming"))


def unwritable_state(root):
    """Why the current user cannot keep the door's state in root, or None.

    Checked with the effective ids of the process as it will run (after
    twistd's --uid/--gid), so a door never starts whose every write would fail.
    Paths that do not exist yet must be creatable in their directory.
    """
    uid, gid = os.geteuid(), os.getegid()
    user = "uid %d gid %d" % (uid, gid)

    def owner(path):
        st = os.stat(path)
        return "owned by uid %d gid %d, mode %04o" % (st.st_uid, st.st_gid, st.st_mode & 0o7777)

    root = os.path.abspath(root)
    if not os.path.isdir(root):
        parent = os.path.dirname(root)
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE):
            return ("state directory %s does not exist and %s, where it would be made, is "
                    "not writable by %s, the door's user (%s); create it owned by that user "
                    "or change the owner or mode of %s" % (root, parent, user, owner(parent),
                                                           parent))
        return None
    for name in ("",) + WRITTEN:
        path = os.path.join(root, name) if name else root
        if not os.path.exists(path):
            continue
        mode = os.W_OK | (os.X_OK if os.path.isdir(path) else 0)
        if not os.access(path, mode, effective_ids=_EFFECTIVE):
            return ("%s is not writable by %s, the door's user (%s); change the owner or "
                    "mode of the state directory (chown -R to that user) or run the door as "
                    "its owner" % (path, user, owner(path)))
    return None


_EFFECTIVE = os.access in os.supports_effective_ids
