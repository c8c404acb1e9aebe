"""Start-up failures as one line an operator can act on, never a traceback.

A service that cannot start (its address is taken or malformed, a directory is
missing or not writable, a configuration file is bad) raises ``StartupError``
whose text names the thing and what to do.  However the process was started,
that line is what is shown: the C-form runner (``distcache.cflags``) prints it
or hands it to the waiting parent of a daemon; under plain ``twistd``
``excepthook`` prints it in place of the traceback, or logs it when standard
error goes nowhere (a daemon).
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger()


class StartupError(Exception):
    """A service cannot start; ``str()`` is the whole message, for the operator.

    Raised below the service without the program's name; the service adds it.
    """

    program = None


class Refused(SystemExit):
    """Loading a configuration was refused: ends the process with this one line (status 1).

    Raised where twistd would turn any Exception into a traceback (loading a tap file)."""

    def __init__(self, message: str):
        super().__init__(message)


def _listen_reason(error: CannotListenError) -> str:
    where = error.port if not error.interface else f"{error.interface}:{error.port}"
    cause = error.socketError
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        return (f"cannot listen on {where}: the address is already in use; stop what "
                f"holds it or choose another --listen")
    if code == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {where}: no interface of this host has that address; "
                f"choose another --listen")
    if code in (errno.EACCES, errno.EPERM):
        return (f"cannot listen on {where}: permission denied (ports below 1024 need "
                f"root; a unix socket needs a writable directory); choose another --listen")
    if code == errno.ENOENT:
        return (f"cannot listen on {where}: its directory does not exist; create it or "
                f"choose another --listen")
    if isinstance(cause, socket.gaierror):
        return f"cannot listen on {where}: unknown host name; choose another --listen"
    return f"cannot listen on {where}: {cause}; choose another --listen"


def _os_reason(error: OSError) -> str:
    name = error.filename2 or error.filename
    name = "a file" if name is None else name
    if error.errno == errno.ENOENT:
        return (f"{name} does not exist (or a directory above it is missing); create it "
                f"or name another")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{name} is not writable or not reachable for uid {os.getuid()}; fix its "
                f"owner or mode, or name another")
    if error.errno == errno.ENOTDIR:
        return f"{name}: a part of the path is not a directory; name another"
    return f"{name}: {error.strerror or error}"


def describe(error: BaseException) -> str:
    """One line naming what failed and what to do, for the errors start-up meets."""
    if isinstance(error, StartupError):
        return str(error)
    if isinstance(error, CannotListenError):
        return _listen_reason(error)
    if isinstance(error, OSError):
        return _os_reason(error)
    from distcache.address import AddressError
    if isinstance(error, AddressError):
        return f"cannot listen: {error}; choose another --listen"
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


#: what start-up may meet that is the operator's to fix rather than a bug
EXPECTED = (StartupError, CannotListenError, OSError, ValueError)


def as_startup_error(program: str, error: BaseException) -> StartupError:
    """``error`` as a StartupError whose message starts with the program's name."""
    if isinstance(error, StartupError) and error.program is not None:
        return error
    named = StartupError(f"{program}: {describe(error)}")
    named.program = program
    return named


def stderr_is_discarded() -> bool:
    """Whether the process's own standard error goes nowhere (a daemon's /dev/null)."""
    err = sys.__stderr__
    if err is None:
        return True
    try:
        st = os.fstat(err.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError):
        return True
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def report(message: str) -> None:
    """Show a start-up failure where someone will see it: the terminal, else the log."""
    if stderr_is_discarded():
        log.critical("{message}", message=message)
    else:
        sys.__stderr__.write(message + "\n")
        sys.__stderr__.flush()


def excepthook(kind, value, tb, _previous=sys.excepthook):
    """sys.excepthook that reports a StartupError as its line, anything else as usual."""
    if isinstance(value, StartupError):
        report(str(value))
    else:
        _previous(kind, value, tb)


def install_excepthook() -> None:
    """Make an uncaught StartupError (under plain twistd) end the process with its line."""
    sys.excepthook = excepthook
