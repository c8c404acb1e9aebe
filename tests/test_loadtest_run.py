"""dc_test against real caches over real sockets: a correct server passes, a wrong one fails."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from distcache import loadtest

import cache_support
from cache_support import DcClientProcess, DcServerProcess, FakeCache, repo_env
from polling import wait_until




class Terminal(io.StringIO):
    def isatty(self):
        return True


def dc_test(*argv, out=None):
    out = io.StringIO() if out is None else out
    err = io.StringIO()
    status = loadtest.main(list(argv), out, err)
    return status, out.getvalue(), err.getvalue()


def assert_figures(out):
    assert " ops/s " in out
    for name in ("p50", "p90", "p99", "max"):
        assert name in out


@pytest.mark.parametrize("extra", [[], ["-persistent"]], ids=["per-op", "persistent"])
def test_passes_against_dc_server_on_unix(server, extra):
    status, out, err = dc_test("-connect", server.address, "-sessions", "12", "-ops", "1500",
                               *extra)
    assert status == 0, err
    assert "Info, 12 sessions generated, will run 1500 random tests" in out
    assert "Info, all tests complete" in out
    assert "Info, 1500 operations in" in out
    assert_figures(out)
    assert err == ""


def test_passes_against_dc_server_on_tcp(server):
    status, out, err = dc_test("--connect", f"IP:127.0.0.1:{server.tcp_port}", "--persistent",
                               "--ops", "1000")
    assert status == 0, err
    assert_figures(out)


@pytest.mark.parametrize("extra", [[], ["-persistent"]], ids=["per-op", "persistent"])
def test_passes_through_dc_client(server, sockdir, extra):
    proxy = DcClientProcess(os.path.join(sockdir, "local"), server.address).start()
    try:
        # dc_client answers empty replies until its server link is up
        wait_until(lambda: dc_test("-connect", proxy.address, "-ops", "1", *extra)[0] == 0,
                   timeout=5, interval=0.1)
        status, out, err = dc_test("-connect", proxy.address, "-sessions", "12", "-ops", "1500",
                                   *extra)
        assert status == 0, err
        assert "Info, all tests complete" in out
        assert_figures(out)
    finally:
        proxy.stop()


def test_fails_clearly_through_a_dc_client_whose_server_is_away(sockdir):
    proxy = DcClientProcess(os.path.join(sockdir, "local"), f"UNIX:{sockdir}/nobody").start()
    try:
        status, out, err = dc_test("-connect", proxy.address, "-ops", "100")
    finally:
        proxy.stop()
    assert status == 1
    assert "Error, transaction failure" in err and "unreachable" in err


def test_passes_while_sessions_expire_mid_run(server):
    # Timeouts of 0.1 to 0.5 s: the run outlives most of them.
    status, out, err = dc_test("-connect", server.address, "-persistent", "-sessions", "8",
                               "-timeout", "0.3", "-timevar", "0.2", "-ops", "6000",
                               "-seed", "5")
    assert status == 0, err


def test_a_small_cache_passes_when_its_capacity_is_given(sockdir):
    small = DcServerProcess(os.path.join(sockdir, "small"), sessions=5).start()
    try:
        status, out, err = dc_test("-connect", small.address, "-persistent", "-sessions", "20",
                                   "-capacity", "5", "-ops", "3000", "-seed", "1")
        assert status == 0, err
        # Told nothing of the limit, dc_test takes the evictions for faults.
        status, out, err = dc_test("-connect", small.address, "-persistent", "-sessions", "20",
                                   "-ops", "3000", "-seed", "2")
        assert status == 1
        assert "tests succeeded before the first failure" in out
    finally:
        small.stop()


def test_fails_against_a_cache_that_forgets_sessions(sockdir):
    with FakeCache(os.path.join(sockdir, "fake"), cache_support.forgetful) as fake:
        status, out, err = dc_test("-connect", fake.address, "-ops", "500", "-seed", "4")
    assert status == 1
    assert err.startswith("Error, ") and "[operation " in err
    assert "tests succeeded before the first failure" in out


def test_fails_on_a_reply_to_another_request(sockdir):
    with FakeCache(os.path.join(sockdir, "fake"), cache_support.wrong_uid) as fake:
        status, out, err = dc_test("-connect", fake.address, "-persistent", "-ops", "50")
    assert status == 1
    assert "Error, transaction failure" in err and "uid" in err
    assert "Info, 0 tests succeeded before the first failure" in out


def test_fails_when_nothing_listens(sockdir):
    status, out, err = dc_test("-connect", f"UNIX:{sockdir}/nobody", "-persistent")
    assert status == 1 and "creation failed" in err
    status, out, err = dc_test("-connect", f"UNIX:{sockdir}/nobody")
    assert status == 1 and "transaction failure" in err


def test_progress_lines_and_a_bar_on_a_terminal(server):
    status, out, err = dc_test("-connect", server.address, "-persistent", "-ops", "3000",
                               "-progress", "1000", out=Terminal())
    assert status == 0, err
    for count in (1000, 2000, 3000):
        assert f"Info, total operations = {count:7d}\n" in out
    assert "\r[" in out and "%" in out


def test_no_bar_when_the_output_is_not_a_terminal(server):
    status, out, err = dc_test("-connect", server.address, "-ops", "300", "-progress", "100")
    assert status == 0 and "\r" not in out


def test_usage_errors_and_help():
    status, out, err = dc_test("-sessions", "3")
    assert status == 1 and "Error, must provide -connect" in err and "Usage: dc_test" in err
    status, out, err = dc_test("-h")
    assert status == 0 and "Usage: dc_test" in err


def test_exit_status_of_the_command(server, sockdir):
    command = [sys.executable, "-m", "distcache.loadtest"]
    good = subprocess.run(command + ["-connect", server.address, "-ops", "200"],
                          env=repo_env(), capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "all tests complete" in good.stdout and " ops/s " in good.stdout
    with FakeCache(os.path.join(sockdir, "fake"), cache_support.forgetful) as fake:
        bad = subprocess.run(command + ["-connect", fake.address, "-ops", "200"],
                             env=repo_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("Error, ")
