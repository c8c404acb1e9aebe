"""A tape pool's space settings: its size, water marks and flush policy.

Plain data, below the policy resolution, the pool, the sweeper and the
flush policy, so each of them imports it without importing one another.

``pool_size`` bytes is the disk space the pool may use (None: no limit,
no sweeping).  Above ``high`` (a fraction of the size) the sweeper drops
disk copies that are on tape, least recently used first, until use is at
or below ``low``.  New files are flushed once ``flush_after`` seconds old,
as soon as ``flush_batch`` of them wait, or at once while the pool is above
its high mark.  The door records the settings it runs with in the state
directory (``space.conf``) so that ``dcap-admin space`` shows the same marks.
"""

import configparser
import os
import re
from dataclasses import dataclass, replace

from distcache.dcap.configsource import ConfigError

DEFAULT_HIGH_WATER = 0.95
DEFAULT_LOW_WATER = 0.85
DEFAULT_SWEEP_INTERVAL = 10.0
CONFIG_NAME = "space.conf"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# create-line option name -> SpaceSettings field
CREATE_LINE = {
    "poolSize": "pool_size",
    "highWater": "high",
    "lowWater": "low",
    "flushAfter": "flush_after",
    "flushBatch": "flush_batch",
    "sweepInterval": "sweep_interval",
}


@dataclass(frozen=True)
class SpaceSettings:
    """Size and marks of a pool and when it flushes; immutable so it pickles."""

    pool_size: "int | None" = None
    high: float = DEFAULT_HIGH_WATER
    low: float = DEFAULT_LOW_WATER
    flush_after: "float | None" = None
    flush_batch: "int | None" = None
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL

    @property
    def high_bytes(self):
        return None if self.pool_size is None else int(self.pool_size * self.high)

    @property
    def low_bytes(self):
        return None if self.pool_size is None else int(self.pool_size * self.low)

    @property
    def flushes(self):
        """True when something makes the pool flush new files by itself."""
        return (self.flush_after is not None or self.flush_batch is not None
                or self.pool_size is not None)

    @property
    def manages_space(self):
        return self.pool_size is not None

    def describe(self):
        """One line for the door's start-up log and dcap-admin."""
        parts = []
        if self.pool_size is not None:
            parts.append("size %d bytes, high %s (%d), low %s (%d)" % (
                self.pool_size, _percent(self.high), self.high_bytes,
                _percent(self.low), self.low_bytes))
        else:
            parts.append("no size limit")
        rules = []
        if self.flush_after is not None:
            rules.append("after %gs" % self.flush_after)
        if self.flush_batch is not None:
            rules.append("%d waiting" % self.flush_batch)
        if self.pool_size is not None:
            rules.append("above the high mark")
        parts.append("flush " + (" or ".join(rules) if rules else "by hand only"))
        return "; ".join(parts)


def _percent(fraction):
    return "%g%%" % round(fraction * 100, 4)


def parse_bytes(text, name="size"):
    """Bytes from ``123``, ``64k``, ``10M``, ``2G`` or ``1T`` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if match is None:
        raise ValueError("%s must be a number of bytes (e.g. 10G), not %r" % (name, text))
    result = int(match.group(1)) * _UNITS[match.group(2)]
    if result <= 0:
        raise ValueError("%s must be positive, not %r" % (name, text))
    return result


def parse_fraction(text, name="mark"):
    """A water mark: ``0.95``, ``95%`` or ``95`` (a number above 1 is a percentage)."""
    value = str(text).strip()
    percent = value.endswith("%")
    try:
        number = float(value.rstrip("%"))
    except ValueError:
        raise ValueError("%s must be a fraction (0.95) or a percentage (95%%), not %r"
                         % (name, text)) from None
    if percent or number > 1:
        number /= 100.0
    if not 0 < number <= 1:
        raise ValueError("%s must lie above 0 and at most 100%%, not %r" % (name, text))
    return number


def _positive(text, name, kind=float):
    try:
        value = kind(str(text).strip())
    except ValueError:
        raise ValueError("%s must be a number, not %r" % (name, text)) from None
    if value <= 0:
        raise ValueError("%s must be positive, not %r" % (name, text))
    return value


_PARSERS = {
    "pool_size": parse_bytes,
    "high": parse_fraction,
    "low": parse_fraction,
    "flush_after": _positive,
    "flush_batch": lambda text, name: _positive(text, name, int),
    "sweep_interval": _positive,
}


def resolve_space(*sources):
    """SpaceSettings from dicts of create-line name -> Setting, first source winning.

    A value that does not parse, or a low mark above the high mark, is a
    ConfigError naming where it came from.
    """
    values, origins = {}, {}
    for source in reversed(sources):
        for option, field in CREATE_LINE.items():
            setting = (source or {}).get(option)
            if setting is None:
                continue
            try:
                values[field] = _PARSERS[field](setting.value, option)
            except ValueError as e:
                raise ConfigError(setting.origin, str(e)) from None
            origins[field] = setting.origin
    settings = replace(SpaceSettings(), **values)
    if settings.low > settings.high:
        raise ConfigError(origins.get("low") or origins.get("high") or "",
                          "lowWater (%s) must not lie above highWater (%s)"
                          % (_percent(settings.low), _percent(settings.high)))
    return settings


# -- the settings a door runs with, recorded in its state directory ---------

def config_path(root):
    return os.path.join(root, CONFIG_NAME)


def save_settings(root, settings):
    """Record settings in root (atomically), for dcap-admin space."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["space"] = {field: str(getattr(settings, field))
                    for field in CREATE_LINE.values() if getattr(settings, field) is not None}
    temp = config_path(root) + ".tmp"
    with open(temp, "w") as f:
        cfg.write(f)
    os.rename(temp, config_path(root))


def load_settings(root):
    """The settings recorded in root, or the defaults (no size limit)."""
    cfg = configparser.ConfigParser(interpolation=None)
    if not cfg.read(config_path(root)) or not cfg.has_section("space"):
        return SpaceSettings()
    section = cfg["space"]
    values = {}
    try:
        for field in CREATE_LINE.values():
            if field in section:
                values[field] = _PARSERS[field](section[field], field)
    except ValueError as e:
        raise ValueError("%s: %s" % (config_path(root), e)) from None
    return replace(SpaceSettings(), **values)
