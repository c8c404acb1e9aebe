"""Two Apache httpd instances share TLS sessions through the memcache listeners.

Apache A keeps its sessions in dc_client's memcache listener, which relays them to
dc_server; Apache B in dc_server's own memcache listener.  A session made on A is
resumed on B; without dc_server both keep serving with full handshakes; once it is
back, resumption returns.
"""

import contextlib
import io
import os
import shutil
import socket
import tempfile
import time

import pytest

from apache_support import Apache, handshake, need_apache
from distcache import resume
from cache_support import (DcClientProcess, DcServerProcess, free_tcp_port,
                           wait_until_connectable)


@pytest.fixture
def farm(tmp_path, sockdir):
    need_apache()
    server_mc, client_mc = free_tcp_port(), free_tcp_port()
    server = DcServerProcess(os.path.join(sockdir, "cache"),
                             extra=["-memcache-listen", f"IP:127.0.0.1:{server_mc}"]).start()
    client = DcClientProcess(os.path.join(sockdir, "scache"), server.address, retry_ms=500,
                             extra=["-memcache-listen", f"IP:127.0.0.1:{client_mc}"]).start()
    wait_until_connectable(socket.AF_INET, ("127.0.0.1", server_mc))
    wait_until_connectable(socket.AF_INET, ("127.0.0.1", client_mc))
    apaches = []
    # Apache's workers run as nobody: their tree must be readable by all, unlike tmp_path.
    top = tempfile.mkdtemp(prefix="apache-")
    os.chmod(top, 0o755)
    try:
        a = Apache(os.path.join(top, "a"), free_tcp_port(), f"127.0.0.1:{client_mc}").start()
        apaches.append(a)
        b = Apache(os.path.join(top, "b"), free_tcp_port(), f"127.0.0.1:{server_mc}").start()
        apaches.append(b)
        yield server, client, a, b
    finally:
        for apache in apaches:
            apache.stop()
        client.stop()
        server.stop()
        shutil.rmtree(top, ignore_errors=True)


def resumes(a, b, path):
    assert handshake(a.port, sess_out=path) == "New"
    return handshake(b.port, sess_in=path) == "Reused"


def test_a_session_made_on_one_apache_resumes_on_the_other(farm, tmp_path):
    server, client, a, b = farm
    path = str(tmp_path / "sess.pem")
    assert resumes(a, b, path), b.log()
    assert handshake(a.port, sess_in=path) == "Reused"
    other = str(tmp_path / "sess2.pem")
    assert handshake(b.port, sess_out=other) == "New"
    assert handshake(a.port, sess_in=other) == "Reused", a.log()


def test_without_dc_server_both_serve_and_reuse_returns_after_restart(farm, tmp_path):
    server, client, a, b = farm
    path = str(tmp_path / "sess.pem")
    server.stop()
    assert handshake(a.port, sess_out=path) == "New"
    assert handshake(b.port, sess_in=path) == "New"
    assert handshake(a.port, sess_in=path) == "New"
    server.start()
    started = time.monotonic()
    # dc_client reconnects within its retry period (500 ms); Apache B's memcache client
    # retries a server it marked dead on its own schedule.
    deadline = started + 30
    while not resumes(a, b, path):
        assert time.monotonic() < deadline, a.log() + b.log()
        time.sleep(0.2)
    print(f"reuse returned {time.monotonic() - started:.1f} s after dc_server restarted")


def dc_resume(*args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = resume.main(list(args))
    return status, out.getvalue()


@pytest.mark.parametrize("version", ["--tls1.2", "--tls1.3"])
def test_dc_resume_finds_the_farm_sharing(farm, version):
    server, client, a, b = farm
    status, out = dc_resume(f"127.0.0.1:{a.port},127.0.0.1:{b.port}", "-n", "12", version,
                            "--servername", "localhost")
    assert status == 0, out
    assert "12 handshakes in" in out and "handshakes/s" in out
    assert f"127.0.0.1:{a.port}  127.0.0.1:{b.port}  3/3 (100%)" in out
    assert f"127.0.0.1:{b.port}  127.0.0.1:{a.port}  3/3 (100%)" in out
    assert out.rstrip().endswith("verdict: this farm shares sessions")


def test_dc_resume_without_the_cache_server(farm, tmp_path):
    server, client, a, b = farm
    server.stop()
    status, out = dc_resume(f"127.0.0.1:{a.port},127.0.0.1:{b.port}", "-n", "8", "--tls1.2",
                            "--cafile", str(tmp_path / "missing.pem"))
    assert status == 2
    a_cert = os.path.join(a.root, "server.crt")
    status, out = dc_resume(f"127.0.0.1:{a.port},127.0.0.1:{b.port}", "-n", "8", "--tls1.2",
                            "--servername", "localhost", "--cafile", a_cert)
    assert status == 1, out
    # B's certificate is not signed by A's: its handshakes fail verification.
    assert f"handshake with 127.0.0.1:{b.port} failed" in out
    assert out.rstrip().endswith("verdict: this farm does not share sessions")
