"""Command lines with the C tools' own flags (``dc_server -listen UNIX:/x -daemon``).

They are translated into a twistd command line for the matching plugin, so both ways
of starting a tool share one implementation.  ``-daemon``, ``-pidfile`` and ``-user``
become twistd's own options; every other single-dash word becomes the plugin's long
option.
"""

from __future__ import annotations

import pwd
import sys
from typing import List, Optional, Sequence


def twistd_argv(plugin: str, argv: Sequence[str]) -> List[str]:
    """The twistd arguments equivalent to a C tool's ``argv`` (without the program name)."""
    daemon = False
    pidfile: Optional[str] = None
    user: Optional[str] = None
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-daemon":
            daemon = True
        elif arg in ("-pidfile", "-user") and i + 1 < len(args):
            i += 1
            if arg == "-pidfile":
                pidfile = args[i]
            else:
                user = args[i]
        elif arg in ("-h", "-help", "--help"):
            rest.append("--help")
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            rest.append("-" + arg)
        else:
            rest.append(arg)
        i += 1
    out: List[str] = []
    if not daemon:
        out.append("--nodaemon")
    if daemon:
        out += ["--syslog", "--prefix", plugin]
    out.append("--pidfile=" + (pidfile or ""))
    if user is not None:
        try:
            entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            raise SystemExit(f"{plugin}: no such user {user!r}")
        out += ["--uid", str(entry.pw_uid), "--gid", str(entry.pw_gid)]
    return out + [plugin] + rest


def run(plugin: str, argv: Optional[Sequence[str]] = None) -> None:
    from twisted.scripts import twistd

    args = sys.argv[1:] if argv is None else argv
    sys.argv = [plugin] + twistd_argv(plugin, args)
    twistd.run()


def dc_server() -> None:
    run("dc_server")


def dc_client() -> None:
    run("dc_client")


def dc_snoop() -> None:
    run("dc_snoop")
