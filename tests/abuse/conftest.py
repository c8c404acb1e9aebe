"""The fault and abuse suite: real processes, real sockets on loopback, real dccp.

Each module starts its own processes (twistd with a log file) so that it can read
their logs and their memory; the helpers live in abuse_support.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "interop"))
sys.path.insert(0, HERE)

import shutil  # noqa: E402
import tempfile  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from abuse_support import Twistd, ports  # noqa: E402
from interop_support import Door, free_low_port  # noqa: E402


def start_cache_stack(directory, server_args=(), client_args=(), snoop_args=()):
    """dc_server (distcache, memcache, metrics), dc_client and dc_snoop in front of it."""
    (server_port, server_mc, server_metrics, client_port, client_mc, client_metrics,
     snoop_port) = ports(7)
    stack = SimpleNamespace(server_port=server_port, server_memcache=server_mc,
                            server_metrics=server_metrics, client_port=client_port,
                            client_memcache=client_mc, client_metrics=client_metrics,
                            snoop_port=snoop_port, processes=[])
    os.makedirs(os.path.join(directory, "server"))
    os.makedirs(os.path.join(directory, "client"))
    os.makedirs(os.path.join(directory, "snoop"))
    try:
        stack.server = Twistd(os.path.join(directory, "server"), "dc_server", [
            "--listen", "IP:127.0.0.1:%d" % server_port,
            "--memcache-listen", "IP:127.0.0.1:%d" % server_mc,
            "--metrics", "IP:127.0.0.1:%d" % server_metrics, "--sessions", "4096"]
            + list(server_args), [server_port, server_mc, server_metrics]).start()
        stack.processes.append(stack.server)
        stack.client = Twistd(os.path.join(directory, "client"), "dc_client", [
            "--listen", "IP:127.0.0.1:%d" % client_port, "--server",
            "IP:127.0.0.1:%d" % server_port, "--retry", "200",
            "--memcache-listen", "IP:127.0.0.1:%d" % client_mc,
            "--metrics", "IP:127.0.0.1:%d" % client_metrics] + list(client_args),
            [client_port, client_mc, client_metrics]).start()
        stack.processes.append(stack.client)
        stack.snoop = Twistd(os.path.join(directory, "snoop"), "dc_snoop", [
            "--listen", "IP:127.0.0.1:%d" % snoop_port, "--server",
            "IP:127.0.0.1:%d" % server_port] + list(snoop_args), [snoop_port]).start()
        stack.processes.append(stack.snoop)
    except Exception:
        stop_all(stack.processes)
        raise
    return stack


def stop_all(processes):
    for process in processes:
        process.stop()


@pytest.fixture(scope="module")
def cache_stack():
    directory = tempfile.mkdtemp(prefix="abuse-")
    stack = start_cache_stack(directory)
    yield stack
    stop_all(stack.processes)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def door_proc(tmp_path_factory):
    """A door with full anonymous access, its metrics and one shared data port."""
    tmp = str(tmp_path_factory.mktemp("abuse-door"))
    data_port, metrics_port = free_low_port(), ports(1)[0]
    door = Door(tmp, "--anonymous-access", "FULL", "--allow-truncate",
                "--portrange", "%d:%d" % (data_port, data_port),
                "--metrics", "tcp:%d:interface=127.0.0.1" % metrics_port)
    door.data_port = data_port
    door.metrics_port = metrics_port
    yield door
    door.stop()
