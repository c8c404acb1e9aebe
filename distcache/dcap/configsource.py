"""
Where a configuration value came from, so a bad one can be reported precisely.

Every setting read from a batch file, a poollist or the command line keeps its
origin ("door.batch:12", "--open-timeout"); the policy resolver names that
origin when it refuses the value, so an administrator sees at start-up which
file and line to fix instead of a traceback.
"""

from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value or line that the door cannot start with."""

    def __init__(self, origin, message):
        self.origin = origin
        self.message = message
        super().__init__(f"{origin}: {message}")


@dataclass(frozen=True)
class Setting:
    """One raw configuration value (a string, as written) and its origin."""

    value: str
    origin: str


def read_config_text(path, kind):
    """The text of a configuration file; an unreadable one is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(path), f"cannot read {kind}: {e}") from None


def origin_of(filename, lineno):
    """The conventional FILE:LINE spelling of a place in a configuration file."""
    return f"{filename}:{lineno}"


def parse_int(setting, name, minimum=0, maximum=2**31 - 1):
    """
    Read a decimal integer setting, refusing anything else with a clear error.

    dCache silently falls back to its defaults on an unparsable number; a
    door that starts with a value other than the one written is worse than
    one that refuses to start, so this refuses.
    """
    text = setting.value.strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(
            setting.origin, f"{name} must be a whole number, not {setting.value!r}"
        ) from None
    if value < minimum or value > maximum:
        raise ConfigError(
            setting.origin,
            f"{name} must be between {minimum} and {maximum}, not {value}",
        )
    return value
