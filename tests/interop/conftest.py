"""Fixtures for the interop tests; the helpers live in interop_support."""

import ctypes.util
import shutil

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


def dcap_clients_missing():
    """Why the real DCAP clients cannot run here, or None when they can."""
    missing = [what for what, found in (
        ("dccp", shutil.which("dccp")),
        ("libdcap.so.1", ctypes.util.find_library("dcap")),
        ("libpdcap.so.1", ctypes.util.find_library("pdcap"))) if not found]
    if not missing:
        return None
    return ("the real DCAP clients are not installed (no %s): install Debian's dcap and "
            "libdcap1 (make test does)" % ", ".join(missing))


def pytest_collection_modifyitems(config, items):
    why = dcap_clients_missing()
    if why is None:
        return
    here = __file__.rsplit("/", 1)[0] + "/"
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.skip(reason=why))
