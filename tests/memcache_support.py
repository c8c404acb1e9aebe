"""Driving memcache listeners with Debian's libmemcached tools and a plain socket."""

import shutil
import socket
import subprocess
import time

import pytest

TOOLS = ("memccp", "memccat", "memcrm", "memcstat")


def need_tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"libmemcached-tools not installed (no {', '.join(missing)})")


def tool(name, port, *args, cwd=None):
    return subprocess.run([name, f"--servers=127.0.0.1:{port}", *args], cwd=cwd,
                          capture_output=True, timeout=30)


def ask(port, data, until=b"\r\n", timeout=5.0):
    """Send raw protocol bytes; read until the reply ends with ``until``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while not got.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def wait_for(predicate, timeout=10.0):
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; True if it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
