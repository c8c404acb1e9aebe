"""Test-wide set-up: tests/ on sys.path, and the fixtures several modules share."""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cache_support import DcServerProcess, free_tcp_port, short_socket_dir  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """A dc_server process on a unix socket and a TCP port, shared by a test module."""
    directory = short_socket_dir()
    process = DcServerProcess(os.path.join(directory, "cache"), tcp_port=free_tcp_port()).start()
    yield process
    process.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sockdir():
    """A directory short enough for unix socket paths."""
    path = short_socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL cluster for the whole run, or a skip saying what is missing."""
    import pg_support

    reason = pg_support.missing_reason()
    if reason:
        pytest.skip(reason)
    server = pg_support.PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """The URL of an empty database of its own on the shared PostgreSQL server."""
    return postgres_server.fresh_database()
