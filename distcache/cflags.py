"""Command lines with the C tools' own flags (``dc_server -listen UNIX:/x -daemon``).

A C-form command line is checked against the plugin's own options and run by twistd's
runner, so both ways of starting a tool share one implementation.  It speaks the C
tools' language: ``-h``, ``-help`` and ``-?`` list the C flags, errors name a flag as
it was typed, and start-up failures end with one line, also from a daemon, whose
waiting parent prints the line its child could not start with.

``-daemon``, ``-pidfile``, ``-user``, ``-logfile`` and ``-syslog`` are the process's
own; every other flag is the plugin's long option.  A daemon logs to ``PLUGIN.log``
in the directory it was started from unless ``-logfile FILE`` or ``-syslog`` says
otherwise.
"""

from __future__ import annotations

import os
import pwd
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from twisted.python import usage

from distcache.version import version_line
from distcache.startup import EXPECTED, StartupError, as_startup_error, report

HELP = ("-h", "-help", "-?", "--help")
VERSION = ("-version", "--version")

#: the process's own flags: name -> (takes a value, help text)
PROCESS_FLAGS = {
    "daemon": (False, "run in the background (logging to {plugin}.log here unless "
                      "-logfile or -syslog)"),
    "pidfile": (True, "write the process id to FILE (default: none)"),
    "user": (True, "switch to USER (name or uid) and its group after binding"),
    "logfile": (True, "log to FILE ('-' for standard output)"),
    "syslog": (False, "log to syslog instead of a file"),
}
METAVAR = {"pidfile": "FILE", "user": "USER", "logfile": "FILE"}


class CommandLineError(Exception):
    """A C-form command line that cannot run; the text names the flag as typed."""


def plugin_options(plugin: str) -> usage.Options:
    """A fresh Options instance of the plugin called ``plugin``."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    for maker in getPlugins(IServiceMaker):
        if maker.tapname == plugin:
            return maker.options()
    raise CommandLineError(f"{plugin}: no such twistd plugin is installed")


def _plugin_flags(options: usage.Options) -> Dict[str, bool]:
    """The plugin's long option names and whether each takes a value."""
    flags = {}
    for name in options.longOpt:
        valued = name.endswith("=")
        name = name.rstrip("=")
        if name not in ("help", "version"):
            flags[name] = valued
    return flags


def translate(plugin: str, argv: Sequence[str],
              options: Optional[usage.Options] = None) -> Tuple[List[str], Dict[str, str]]:
    """The twistd arguments for a C-form ``argv``, and each long name's typed spelling.

    Raises CommandLineError for an unknown flag, a flag missing its value or a stray
    word, naming what the user typed.
    """
    options = plugin_options(plugin) if options is None else options
    flags = _plugin_flags(options)
    typed: Dict[str, str] = {}
    own: Dict[str, object] = {}
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise CommandLineError(f"{plugin}: unexpected argument {arg!r} "
                                   f"({plugin} -h lists the flags)")
        name, eq, inline = arg.lstrip("-").partition("=")
        spelled = arg.partition("=")[0]
        if name in PROCESS_FLAGS:
            valued = PROCESS_FLAGS[name][0]
        elif name in flags:
            valued = flags[name]
        else:
            raise CommandLineError(f"{plugin}: {spelled} is not a {plugin} flag "
                                   f"({plugin} -h lists them)")
        typed[name] = spelled
        if valued:
            if eq:
                value = inline
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise CommandLineError(f"{plugin}: {spelled} needs a value")
        elif eq:
            raise CommandLineError(f"{plugin}: {spelled} takes no value")
        if name in PROCESS_FLAGS:
            own[name] = value if valued else True
        else:
            rest += ["--" + name, value] if valued else ["--" + name]
    return _process_args(plugin, own) + [plugin] + rest, typed


def twistd_argv(plugin: str, argv: Sequence[str]) -> List[str]:
    """The twistd arguments equivalent to a C tool's ``argv`` (without the program name)."""
    return translate(plugin, argv)[0]


def _process_args(plugin: str, own: Dict[str, object]) -> List[str]:
    out: List[str] = []
    if not own.get("daemon"):
        out.append("--nodaemon")
    if own.get("syslog"):
        out += ["--syslog", "--prefix", plugin]
    elif own.get("logfile"):
        out.append("--logfile=" + str(own["logfile"]))
    elif own.get("daemon"):
        out.append("--logfile=" + default_logfile(plugin))
    out.append("--pidfile=" + str(own.get("pidfile") or ""))
    user = own.get("user")
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
        except KeyError:
            raise CommandLineError(f"{plugin}: -user: no such user {user!r}")
        out += ["--uid", str(entry.pw_uid), "--gid", str(entry.pw_gid)]
    return out


def default_logfile(plugin: str) -> str:
    """Where a C-form daemon logs without -logfile or -syslog."""
    return os.path.abspath(f"{plugin}.log")


def in_typed_words(message: str, typed: Dict[str, str]) -> str:
    """An option parser's message with ``--name`` spelled as the user typed it."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: typed.get(m.group(1), "-" + m.group(1)),
                  message)


def help_text(plugin: str, options: usage.Options) -> str:
    """The C-form usage: the plugin's flags with one dash, then the process's own."""
    rows = []
    params = {name.rstrip("="): name.endswith("=") for name in options.longOpt}
    for name, valued in params.items():
        if name in ("help", "version"):
            continue
        doc = " ".join((options.docs.get(name) or "").split())
        default = options.defaults.get(name) if hasattr(options, "defaults") else None
        if valued and default not in (None, "", 0):
            doc += f" (default {default})"
        meta = " " + name.upper().replace("-", "_") if valued else ""
        rows.append((f"-{name}{meta}", doc))
    for name, (valued, doc) in PROCESS_FLAGS.items():
        meta = " " + METAVAR[name] if valued else ""
        rows.append((f"-{name}{meta}", doc.format(plugin=plugin)))
    rows.append(("-version", "print the version and exit"))
    rows.append(("-h, -help, -?", "print this help and exit"))
    width = max(len(flag) for flag, _ in rows) + 2
    lines = [f"Usage: {plugin} [flags]", ""]
    if getattr(options, "longdesc", None):
        lines += [" ".join(options.longdesc.split()), ""]
    lines += [f"  {flag.ljust(width)}{doc}" for flag, doc in rows]
    lines += ["", f"Every flag may also be written --flag or --flag=value; "
                  f"'twistd {plugin} --help' shows the twistd form."]
    return "\n".join(lines) + "\n"


def _runner_class():
    from twisted.scripts.twistd import _SomeApplicationRunner

    class Runner(_SomeApplicationRunner):
        """twistd's runner, with a daemon's start-up failure handed whole to its parent."""

        plugin = "distcache"
        typed: Dict[str, str] = {}

        def _formatChildException(self, exception):
            message = str(as_startup_error(self.plugin, exception)
                          if isinstance(exception, EXPECTED)
                          else f"{self.plugin}: {type(exception).__name__}: {exception}")
            message = in_typed_words(message, self.typed)
            return b"1 " + message.splitlines()[0].encode("utf-8", "backslashreplace")

        def _waitForStart(self, readPipe: int) -> int:
            # One read, as twistd's own: the child writes its status in one piece, and
            # this (parent) side still holds the pipe's write end, so no EOF comes.
            data = os.read(readPipe, 4096)
            if data == b"0":
                return 0
            message = data[2:].decode("utf-8", "replace") or (
                f"{self.plugin}: the daemon ended during start-up; see its log")
            sys.__stderr__.write(message + "\n")
            sys.__stderr__.flush()
            return 1

    return Runner


def run(plugin: str, argv: Optional[Sequence[str]] = None) -> None:
    """Run ``plugin`` from a C-form command line; exits with the process's status."""
    from twisted.scripts.twistd import ServerOptions

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in HELP for a in args):
            sys.stdout.write(help_text(plugin, plugin_options(plugin)))
            sys.exit(0)
        if any(a in VERSION for a in args):
            sys.stdout.write(version_line(plugin) + "\n")
            sys.exit(0)
        twistd_args, typed = translate(plugin, args)
        config = ServerOptions()
        try:
            config.parseOptions(twistd_args)
        except usage.UsageError as e:
            raise CommandLineError(f"{plugin}: {in_typed_words(str(e), typed)}")
    except (CommandLineError, StartupError) as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(2 if isinstance(e, CommandLineError) else 1)
    sys.argv = [plugin] + twistd_args
    runner = _runner_class()(config)
    runner.plugin = plugin
    runner.typed = typed
    try:
        runner.run()
    except EXPECTED as e:
        report(in_typed_words(str(as_startup_error(plugin, e)), typed))
        sys.exit(1)
    if runner._exitSignal is not None:
        from twisted.application.app import _exitWithSignal
        _exitWithSignal(runner._exitSignal)


def dc_server() -> None:
    run("dc_server")


def dc_client() -> None:
    run("dc_client")


def dc_snoop() -> None:
    run("dc_snoop")
