"""
dCache ``*.poollist`` files: one pool per line.

    pool1  /srv/dcap/pool1  sticky=allowed maxSendBufferSize=1048576 tag.hostname=node1

The first two words are the pool's name and its directory; the rest are
``key=value`` options (the same names as the pool's create-line options,
without the leading dash) and ``tag.NAME=VALUE`` tags.  dCache's book calls
the poollist the most appropriate place for a pool's buffer sizes, so the
options here act as that pool's create-line options.
"""

from dataclasses import dataclass, field

from distcache.dcap.configsource import ConfigError, Setting, origin_of, read_config_text

STICKY_VALUES = ("allowed", "denied")


@dataclass(frozen=True)
class PoolEntry:
    """One poollist line: a pool, its directory, its options and its tags."""

    name: str
    path: str
    options: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    origin: str = ""


def parse_poollist(text, filename="<poollist>"):
    """
    Parse a poollist; return the entries in file order.

    Refuses (ConfigError naming FILE:LINE) a line without a directory, a
    second entry for the same pool, an option that is not ``key=value``, and
    a ``sticky`` other than allowed/denied.
    """
    entries = []
    seen = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        origin = origin_of(filename, lineno)
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) < 2:
            raise ConfigError(origin, f"pool {words[0]!r} has no directory")
        name, path = words[0], words[1]
        if name in seen:
            raise ConfigError(
                origin, f"pool {name!r} is already defined at {seen[name]}"
            )
        seen[name] = origin
        options = {}
        tags = {}
        for word in words[2:]:
            key, sep, value = word.partition("=")
            if not sep or not key:
                raise ConfigError(origin, f"expected key=value, not {word!r}")
            if key.startswith("tag."):
                tags[key[4:]] = value
            else:
                options[key.lstrip("-")] = Setting(value, origin)
        sticky = options.get("sticky")
        if sticky is not None and sticky.value not in STICKY_VALUES:
            raise ConfigError(
                origin, f"sticky must be allowed or denied, not {sticky.value!r}"
            )
        entries.append(PoolEntry(name, path, options, tags, origin))
    return entries


def read_poollist(path):
    """Read and parse a poollist file; an unreadable file is a ConfigError."""
    return parse_poollist(read_config_text(path, "poollist"), str(path))
