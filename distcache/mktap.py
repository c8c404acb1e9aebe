"""dc-mktap: a tap file for ``twistd -f`` from a plugin's own command line.

A tap file is a pickle, and unpickling runs code: it is written mode 0600 and must
only be loaded from a trusted place.  What this one holds is plain configuration,
not live objects: a marker, a format number, the plugin's name and its command-line
words.  Loading it calls ``load_tap``, which refuses another format or a payload
not written here, and otherwise builds the service exactly as ``twistd PLUGIN
WORDS...`` would, so a tap file always means what its command line means.
"""

from __future__ import annotations

import os
import pickle
import sys
from importlib import import_module
from typing import List, Sequence

from twisted.application import service
from twisted.persisted import sob
from twisted.python import usage
from twisted.python.components import Componentized

from distcache import __version__
from distcache.startup import Refused, StartupError
from distcache.version import version_line

MARKER = "distcache-twisted tap"
FORMAT = 1
PLUGINS = ("dc_server", "dc_client", "dc_snoop", "dcap-door")

USAGE = f"""\
Usage: dc-mktap PLUGIN [the plugin's options] -o FILE
       dc-mktap PLUGIN --help

Write a tap file that `twistd -n -f FILE` (or, as a daemon, `twistd -f FILE`)
runs as `twistd PLUGIN [options]` would.  PLUGIN is one of {", ".join(PLUGINS)}.
The file is written mode 0600: loading a tap file runs code, so keep it where
only its owner can change it.

  -o, --output FILE   the tap file to write
  --version           print the version and exit
  -h, --help          print this help and exit
"""


class TapError(StartupError):
    """A tap file that cannot be loaded: not ours, or of another format."""


class Tap:
    """What a tap file pickles: plain, versioned configuration."""

    def __init__(self, plugin: str, argv: Sequence[str]):
        self.plugin = plugin
        self.argv = list(argv)

    def payload(self) -> dict:
        return {"marker": MARKER, "format": FORMAT, "written_by": version_line("dc-mktap"),
                "plugin": self.plugin, "argv": list(self.argv)}

    def __reduce__(self):
        # by module name, so that a tap written by ``python -m distcache.mktap`` names
        # distcache.mktap and not __main__
        return (import_module(__spec__.name if __spec__ else __name__).load_tap,
                (self.payload(),))


def service_maker(plugin: str):
    """The twistd plugin (IServiceMaker) called ``plugin``."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    for maker in getPlugins(IServiceMaker):
        if maker.tapname == plugin:
            return maker
    raise TapError(f"the twistd plugin {plugin} is not installed here")


def plugin_options(plugin: str) -> usage.Options:
    return service_maker(plugin).options()


class TapApplication(Componentized):
    """twistd's Application, which pickles as its tap: twistd's shutdown save of a
    running tap (``PLUGIN-shutdown.tap``) is then the same plain configuration."""

    def __init__(self, tap: Tap):
        super().__init__()
        self.tap = tap

    def __reduce__(self):
        return self.tap.__reduce__()


def build_application(plugin: str, argv: Sequence[str]):
    """The twistd Application of ``twistd PLUGIN ARGV``; UsageError as twistd would raise."""
    maker = service_maker(plugin)
    options = maker.options()
    options.parseOptions(list(argv))
    application = TapApplication(Tap(plugin, argv))
    # what twisted.application.service.Application(name) assembles
    for component in (service.MultiService(), service.Process(), sob.Persistent(application,
                                                                                   plugin)):
        application.addComponent(component, ignoreClass=1)
    service.IService(application).setName(plugin)
    maker.makeService(options).setServiceParent(application)
    return application


def load_tap(payload):
    """Unpickling entry of a tap file: check what it is, then build its Application.

    A refusal ends the process with its line (``Refused``), as twistd would otherwise
    log a traceback for it.
    """
    try:
        return _load(payload)
    except TapError as e:
        raise Refused(str(e)) from None


def _load(payload):
    if not isinstance(payload, dict) or payload.get("marker") != MARKER:
        raise TapError("this tap file was not written by dc-mktap; write it again with "
                       "dc-mktap PLUGIN [options] -o FILE")
    if payload.get("format") != FORMAT:
        raise TapError(f"this tap file has format {payload.get('format')!r} "
                       f"({payload.get('written_by', 'unknown writer')}); distcache-twisted "
                       f"{__version__} reads format {FORMAT}: write it again with dc-mktap")
    plugin, argv = payload.get("plugin"), payload.get("argv")
    if plugin not in PLUGINS or not isinstance(argv, list) or \
            not all(isinstance(a, str) for a in argv):
        raise TapError("this tap file names no plugin this version knows; write it again "
                       "with dc-mktap")
    try:
        return build_application(plugin, argv)
    except usage.UsageError as e:
        raise TapError(f"{plugin} (from a tap file): {e}") from None


def write_tap(path: str, tap: Tap) -> None:
    """Write ``tap`` to ``path``, mode 0600, replacing the file whole."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(tap, f, protocol=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def split_output(argv: Sequence[str]) -> "tuple[str | None, List[str]]":
    """(-o FILE, the rest) from dc-mktap's arguments after the plugin name."""
    output = None
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-o", "--output"):
            if i >= len(args):
                raise TapError(f"dc-mktap: {arg} needs a value")
            output = args[i]
            i += 1
        elif arg.startswith("--output="):
            output = arg.partition("=")[2]
        else:
            rest.append(arg)
    return output, rest


def main(argv: "Sequence[str] | None" = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "-help", "-?"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] in ("--version", "-version"):
        sys.stdout.write(version_line("dc-mktap") + "\n")
        return 0
    plugin, rest = args[0], args[1:]
    try:
        if plugin not in PLUGINS:
            raise TapError(f"dc-mktap: {plugin!r} is not a plugin it writes taps for "
                           f"({', '.join(PLUGINS)})")
        if any(a in ("-h", "--help") for a in rest):
            sys.stdout.write(str(plugin_options(plugin)))
            return 0
        output, words = split_output(rest)
        if output is None:
            raise TapError("dc-mktap: -o FILE is required (the tap file to write)")
        try:
            build_application(plugin, words)
        except usage.UsageError as e:
            raise TapError(f"dc-mktap {plugin}: {e}") from None
        write_tap(output, Tap(plugin, words))
    except (TapError, OSError) as e:
        message = str(e) if isinstance(e, TapError) else \
            f"dc-mktap: cannot write {e.filename}: {e.strerror}"
        sys.stderr.write(message + "\n")
        return 2 if isinstance(e, TapError) else 1
    sys.stdout.write(f"wrote {output} (mode 0600): twistd -n -f {output}\n")
    return 0


def script() -> None:
    """The ``dc-mktap`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    script()
