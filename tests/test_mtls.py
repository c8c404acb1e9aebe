"""mtls: listeners require a client certificate from their CA; clients use Twisted's tls: form.

A real dc_server process listens on ``mtls:``; the Twisted client library connects with
``tls:HOST:PORT:trustRoots=...:certificate=...:privateKey=...``.  Certificates are made
at run time.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from cache_support import free_tcp_port, repo_env
from polling import wait_until
from tls_support import CA, mtls_listen, tls_connect
from distcache import client as cache_client
from distcache.client import CacheError


@pytest.fixture(scope="module")
def pki():
    directory = tempfile.mkdtemp(prefix="mtls-")
    ca = CA(directory, "farm")
    other = CA(directory, "other")
    yield {
        "dir": directory, "ca": ca, "other": other,
        "server": ca.issue("localhost", server=True),
        "client": ca.issue("web1"),
        "stranger": other.issue("web9"),
    }
    shutil.rmtree(directory, ignore_errors=True)


class ServerWithLog:
    """A dc_server process on an mtls: address, its log in a file the test can read."""

    def __init__(self, directory, listen):
        self.log_path = os.path.join(directory, "server-%d.log" % free_tcp_port())
        self.log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from distcache.cflags import dc_server; dc_server()",
             "-listen", listen],
            env=repo_env(), stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log()}"
            time.sleep(0.05)
        return self.log()

    def stop(self):
        self.process.kill()
        self.process.wait(10)
        self.log_file.close()


@pytest.fixture
def mtls_server(pki):
    port = free_tcp_port()
    ca_file = os.path.join(pki["dir"], "clients-ca-%d.pem" % port)
    shutil.copy(pki["ca"].cert_path, ca_file)
    server = ServerWithLog(pki["dir"], mtls_listen(port, pki["server"], pki["ca"])
                           .replace(pki["ca"].cert_path, ca_file))
    server.port, server.ca_file = port, ca_file
    server.wait_for_log("listening")
    yield server
    server.stop()


@defer.inlineCallbacks
def _attempt(where):
    """One ADD over a new connection: the result, or the CacheError/TLS failure it met."""
    try:
        cache = yield cache_client.connect(reactor, where)
    except Exception as e:  # refused before the connection was made
        return e
    try:
        return (yield cache.has(b"probe"))
    except CacheError as e:
        return e
    finally:
        if cache.transport is not None:
            cache.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_client_with_a_certificate_from_the_ca_is_served(pki, mtls_server):
    where = tls_connect(mtls_server.port, pki["ca"], pki["client"])
    cache = yield cache_client.connect(reactor, where)
    assert (yield cache.add(b"tls-session", b"secret master key", 60000)) is True
    assert (yield cache.get(b"tls-session")) == b"secret master key"
    cache.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_client_without_a_certificate_is_refused_in_the_handshake(pki, mtls_server):
    outcome = yield _attempt(tls_connect(mtls_server.port, pki["ca"]))
    assert isinstance(outcome, Exception), outcome
    log = mtls_server.wait_for_log("refused")
    assert "TLS client 127.0.0.1:" in log


@pytest_twisted.inlineCallbacks
def test_a_client_certificate_from_another_ca_is_refused(pki, mtls_server):
    outcome = yield _attempt(tls_connect(mtls_server.port, pki["ca"], pki["stranger"]))
    assert isinstance(outcome, Exception), outcome
    mtls_server.wait_for_log("refused")


@pytest_twisted.inlineCallbacks
def test_the_client_verifies_the_server_name(pki, mtls_server):
    # The right server reached under a name its certificate does not carry.
    where = tls_connect(mtls_server.port, pki["ca"], pki["client"], host="cache.example.org")
    where += ":endpoint=tcp\\:127.0.0.1\\:%d" % mtls_server.port
    outcome = yield _attempt(where)
    assert isinstance(outcome, Exception), outcome


@pytest_twisted.inlineCallbacks
def test_sighup_reloads_the_ca_and_keeps_open_connections_and_sessions(pki, mtls_server):
    good = tls_connect(mtls_server.port, pki["ca"], pki["client"])
    stranger = tls_connect(mtls_server.port, pki["ca"], pki["stranger"])
    kept = yield cache_client.connect(reactor, good)
    assert (yield kept.add(b"before-reload", b"data", 60000)) is True

    shutil.copy(pki["other"].cert_path, mtls_server.ca_file)
    os.kill(mtls_server.process.pid, signal.SIGHUP)
    mtls_server.wait_for_log("TLS certificates reloaded")

    assert (yield kept.get(b"before-reload")) == b"data"     # same connection, same cache
    newcomer = yield cache_client.connect(reactor, stranger)
    assert (yield newcomer.get(b"before-reload")) == b"data"
    newcomer.transport.loseConnection()
    refused = yield _attempt(good)
    assert isinstance(refused, Exception), refused
    kept.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_bad_file_at_reload_keeps_the_previous_certificates(pki, mtls_server):
    with open(mtls_server.ca_file, "wb") as f:
        f.write(b"not a certificate\n")
    os.kill(mtls_server.process.pid, signal.SIGHUP)
    log = mtls_server.wait_for_log("TLS reload failed")
    assert "previous certificates stay in force" in log
    good = tls_connect(mtls_server.port, pki["ca"], pki["client"])
    cache = yield cache_client.connect(reactor, good)
    assert (yield cache.has(b"nothing")) is False
    cache.transport.loseConnection()
    assert mtls_server.process.poll() is None


def test_an_mtls_address_without_a_ca_is_a_clear_start_up_error(pki):
    port = free_tcp_port()
    result = subprocess.run(
        [sys.executable, "-c", "from distcache.cflags import dc_server; dc_server()",
         "-listen", f"mtls:{port}:privateKey={pki['server'].key}"],
        env=repo_env(), capture_output=True, timeout=60)
    assert result.returncode != 0
    assert b"caCerts=CA.pem" in result.stdout + result.stderr


# The tls: client form everywhere an address is taken ---------------------------------

def _child(tool, *argv):
    return subprocess.Popen(
        [sys.executable, "-c", f"from distcache.cflags import {tool}; {tool}()", *argv],
        env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _answers(where):
    """True once ``where`` gives a real answer (dc_client answers empty until linked)."""
    from distcache.blocking import SessionCache
    try:
        SessionCache(where, timeout=2).has(b"are-you-there")
        return True
    except CacheError:
        return False


def _dc_test(*argv):
    import io
    from distcache import loadtest
    out, err = io.StringIO(), io.StringIO()
    return loadtest.main(list(argv), out, err), out.getvalue() + err.getvalue()


def test_the_blocking_client_speaks_tls_with_a_client_certificate(pki, mtls_server):
    from distcache.blocking import Mode, SessionCache
    good = tls_connect(mtls_server.port, pki["ca"], pki["client"])
    for mode in (Mode.PER_OPERATION, Mode.PERSISTENT):
        with SessionCache(good, mode, timeout=5) as cache:
            assert cache.add(b"blocking-%d" % mode, b"over tls", 60000) is True
            assert cache.get(b"blocking-%d" % mode) == b"over tls"
    with pytest.raises(CacheError):
        SessionCache(tls_connect(mtls_server.port, pki["ca"]), timeout=5).has(b"x")


def test_dc_test_connects_with_tls(pki, mtls_server):
    good = tls_connect(mtls_server.port, pki["ca"], pki["client"])
    status, output = _dc_test("-connect", good, "-sessions", "5", "-ops", "200")
    assert status == 0, output
    status, output = _dc_test("-connect", tls_connect(mtls_server.port, pki["ca"]),
                              "-sessions", "5", "-ops", "20")
    assert status == 1, output


@pytest.mark.parametrize("tool", ["dc_client", "dc_snoop"])
def test_the_server_leg_of_dc_client_and_dc_snoop_speaks_tls(pki, mtls_server, sockdir, tool):
    from cache_support import wait_until_connectable
    import socket as _socket
    local = os.path.join(sockdir, tool)
    child = _child(tool, "-listen", f"UNIX:{local}",
                   "-server", tls_connect(mtls_server.port, pki["ca"], pki["client"]))
    try:
        wait_until_connectable(_socket.AF_UNIX, local)
        assert wait_until(lambda: _answers(f"UNIX:{local}"), 20), f"{tool} never reached its server"
        status, output = _dc_test("-connect", f"UNIX:{local}", "-sessions", "5", "-ops", "200",
                                  "-timeout", "30")
        assert status == 0, output
    finally:
        child.kill()
        child.wait(10)


@pytest.mark.parametrize("tool", ["dc_client", "dc_snoop"])
def test_dc_client_and_dc_snoop_listen_with_mtls_too(pki, mtls_server, tool):
    port = free_tcp_port()
    child = _child(tool, "-listen", mtls_listen(port, pki["server"], pki["ca"]),
                   "-server", tls_connect(mtls_server.port, pki["ca"], pki["client"]))
    try:
        from cache_support import wait_until_connectable
        import socket as _socket
        wait_until_connectable(_socket.AF_INET, ("127.0.0.1", port))
        good = tls_connect(port, pki["ca"], pki["client"])
        assert wait_until(lambda: _answers(good), 20), f"{tool} never reached its server"
        status, output = _dc_test("-connect", tls_connect(port, pki["ca"], pki["client"]),
                                  "-sessions", "5", "-ops", "100", "-timeout", "30")
        assert status == 0, output
        status, output = _dc_test("-connect", tls_connect(port, pki["ca"], pki["stranger"]),
                                  "-sessions", "5", "-ops", "10")
        assert status == 1, output
    finally:
        child.kill()
        child.wait(10)
