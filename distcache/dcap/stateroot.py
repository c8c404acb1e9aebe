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
