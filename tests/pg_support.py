"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster.

The cluster lives in a temporary directory, listens on loopback on a free
port and in a socket directory of its own, trusts local connections and
runs without fsync (test data need not survive a crash).  As root, initdb
and postgres run as the ``postgres`` user, which PostgreSQL requires.
Each test gets a database of its own (``fresh_database``).
"""

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from cache_support import free_tcp_port


def postgres_bin():
    """The newest /usr/lib/postgresql/*/bin holding initdb and postgres, or None."""
    found = []
    for directory in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(directory, "initdb"), os.X_OK) and \
                os.access(os.path.join(directory, "postgres"), os.X_OK):
            version = os.path.basename(os.path.dirname(directory))
            found.append((int(version) if version.isdigit() else 0, directory))
    return max(found)[1] if found else None


def missing_reason():
    """Why these tests cannot run here (None when they can)."""
    if postgres_bin() is None:
        return "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (Debian package postgresql)"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (the [postgresql] extra)"
    if sys.implementation.name == "pypy" and psycopg.pq.__impl__ == "python":
        return ("psycopg's ctypes libpq binding fails on PyPy 7.3.11 ('cannot create weak "
                "reference to 'weakref' object' when connecting) and psycopg[binary] has no PyPy wheel")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server as"
    return None


class PostgresServer:
    """One temporary PostgreSQL cluster, started and stopped by the tests."""

    def __init__(self):
        self.bin = postgres_bin()
        self.directory = tempfile.mkdtemp(prefix="dcap-pg-")
        self.data = os.path.join(self.directory, "data")
        self.sockets = os.path.join(self.directory, "run")
        self.log = os.path.join(self.directory, "server.log")
        self.port = free_tcp_port()
        self.user = "postgres"
        self._as = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chmod(self.directory, 0o700)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self.user = pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *argv, **kwargs):
        return subprocess.run(self._as + list(argv), check=True, capture_output=True,
                              cwd=self.directory, timeout=120, **kwargs)

    def start(self):
        os.makedirs(self.sockets, exist_ok=True)
        if self._as:
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-U", self.user,
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        options = ("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
                   % (self.port, self.sockets))
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l", self.log,
                  "-o", options, "-w", "-t", "60", "start")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout=30.0):
        import psycopg
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database):
        return "postgresql://%s@127.0.0.1:%d/%s" % (self.user, self.port, database)

    def fresh_database(self):
        """The URL of a new, empty database on this server."""
        import psycopg
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return self.url(name)

    def stop(self):
        try:
            self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", "immediate",
                      "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)
