"""Fixtures for the interop tests; the helpers live in interop_support."""

import pytest

from interop_support import TRUST_LOCAL, Door, _doors


@pytest.fixture(scope="session")
def doors(tmp_path_factory):
    """door(*options): one running door per distinct option list."""
    def get(*options):
        if options not in _doors:
            tmp = str(tmp_path_factory.mktemp("door"))
            _doors[options] = Door(tmp, *options)
        return _doors[options]
    yield get
    for door in _doors.values():
        door.stop()
    _doors.clear()


@pytest.fixture
def door(doors):
    """The usual door: full anonymous access, overwriting allowed."""
    return doors(*TRUST_LOCAL, "--anonymous-access", "FULL", "--allow-truncate")
