"""The door's reply for a refusal, formatted by the one escaper the door uses."""

from distcache.dcap import control

_PREFIX = "0 0 client failed "


def failed_args(error):
    """What the door puts after ``failed `` for error: rc, quoted message, POSIX name."""
    line = control.failed(0, 0, error.rc, error.message, error.posix).decode("ascii")
    assert line.startswith(_PREFIX) and line.endswith("\n")
    return line[len(_PREFIX):-1]
