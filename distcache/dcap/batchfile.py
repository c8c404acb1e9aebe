"""
dCache batch (context) files: the lines an administrator already has.

Two kinds of line matter to a DCAP door and its pool:

    set context dCap-openTimeout 200
    set context dCap3-maxSendBufferSize 1048576
    create dmg.cells.services.login.LoginManager DCap-2 \\
        "${port} diskCacheV111.doors.DCapDoor -keepAlive=60 -openTimeout=300"
    create diskCacheV111.pools.MultiProtocolPool2 pool1 \\
        "!MoverMap -defaultSendBufferSize=262144"

Context entries are kept by name; the ``-key=value`` options of a create line
are kept as door options (a login manager or DCapDoor cell) or pool options
(a pool cell).  Other batch commands (``set printout``, ``onerror``,
``define`` ...) configure parts of dCache that do not exist here: they are
reported in ``ignored`` so the caller can log them, never silently acted on.
Values are checked later, by the policy resolver, which names the file and
line of any value it refuses.
"""

import shlex
from dataclasses import dataclass, field

from distcache.dcap.configsource import ConfigError, Setting, origin_of, read_config_text


@dataclass
class BatchFile:
    """What a batch file says: context entries and create-line options."""

    context: dict = field(default_factory=dict)
    door_options: dict = field(default_factory=dict)
    pool_options: dict = field(default_factory=dict)
    ignored: list = field(default_factory=list)


def _logical_lines(text):
    """Join backslash-continued lines; yield (first line number, text)."""
    pending = []
    start = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if start is None:
            start = lineno
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending)
        pending = []
        start = None
    if pending:
        yield start, " ".join(pending)


def _create_options(tokens, origin):
    """The ``-key[=value]`` options among a create line's argument string."""
    options = {}
    for token in tokens:
        if not token.startswith("-") or token == "-":
            continue
        key, sep, value = token[1:].partition("=")
        if not key:
            raise ConfigError(origin, f"malformed option {token!r}")
        options[key] = Setting(value if sep else "", origin)
    return options


def _is_pool_cell(class_name):
    return "pool" in class_name.lower()


def _is_door_cell(class_name, args):
    lowered = class_name.lower()
    return "loginmanager" in lowered or "door" in lowered or any(
        "dcapdoor" in a.lower() for a in args
    )


def parse_batch(text, filename="<batch>"):
    """
    Parse the text of a batch file.

    Raises ConfigError naming FILE:LINE for lines that are malformed (a
    ``set context`` without a value, unbalanced quotes, a create line
    without a cell name).
    """
    batch = BatchFile()
    for lineno, line in _logical_lines(text):
        origin = origin_of(filename, lineno)
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            tokens = shlex.split(stripped, comments=True, posix=True)
        except ValueError as e:
            raise ConfigError(origin, f"cannot split line: {e}") from None
        if not tokens:
            continue
        if tokens[:2] == ["set", "context"]:
            if len(tokens) < 4:
                raise ConfigError(origin, "expected: set context NAME VALUE")
            # dCache takes the rest of the line as the value.
            batch.context[tokens[2]] = Setting(" ".join(tokens[3:]), origin)
        elif tokens[0] == "create":
            if len(tokens) < 3:
                raise ConfigError(origin, "expected: create CLASS CELL \"ARGS\"")
            class_name = tokens[1]
            args = []
            for arg in tokens[3:]:
                args.extend(arg.split())
            options = _create_options(args, origin)
            if _is_pool_cell(class_name):
                batch.pool_options.update(options)
            elif _is_door_cell(class_name, args):
                batch.door_options.update(options)
            else:
                batch.ignored.append((origin, stripped))
        else:
            batch.ignored.append((origin, stripped))
    return batch


def read_batch(path):
    """Read and parse a batch file; an unreadable file is a ConfigError."""
    return parse_batch(read_config_text(path, "batch file"), str(path))


def parse_option_line(text, origin):
    """
    Create-line options given directly (``-openTimeout=300 -keepAlive=60``),
    as a twistd option value: the same ``-key=value`` form a create line uses.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise ConfigError(origin, f"cannot split options: {e}") from None
    for token in tokens:
        if not token.startswith("-"):
            raise ConfigError(origin, f"expected -key=value, not {token!r}")
    return _create_options(tokens, origin)
