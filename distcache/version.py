"""This project's version as every command prints it (``--version``, ``-version``)."""

import sys

from distcache import __version__

PROJECT = "distcache-twisted"


def version_line(program: str) -> str:
    return f"{program} ({PROJECT}) {__version__}"


def opt_version(self):
    """Print this project's version and exit."""
    program = getattr(self, "program", None) or PROJECT
    sys.stdout.write(version_line(program) + "\n")
    sys.exit(0)
