"""Start-up failures, the C-form command lines, versions and the door's start-up lines.

Every failure ends with one line naming the thing and what to do, a non-zero status
and no traceback: under twistd, in the C form, and from a daemon (whose waiting
parent prints its child's line).
"""

import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from distcache import __version__

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from interop_support import free_low_port  # noqa: E402
from polling import wait_until  # noqa: E402

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def c_form(tool):
    return [sys.executable, "-c", f"from distcache.cflags import {tool}; {tool}()"]


def run(argv, cwd, timeout=60, **kw):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)


def one_clear_line(out, *words):
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in out.stderr.splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def busy_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize("form", ["twistd", "c", "c-daemon"])
def test_address_in_use(tmp_path, busy_port, form):
    addr = f"IP:127.0.0.1:{busy_port}"
    if form == "twistd":
        argv = TWISTD + ["-n", "--pidfile=", "dc_server", "--listen", addr]
    else:
        argv = c_form("dc_server") + ["-listen", addr]
        if form == "c-daemon":
            argv += ["-daemon"]
    out = run(argv, tmp_path)
    line = one_clear_line(out, "already in use")
    assert line.startswith("dc_server: cannot listen on 127.0.0.1:") and "listen" in line
    if form != "twistd":
        assert "another -listen" in line
    if form == "c-daemon":
        # the daemon's own log (default: dc_server.log where it started) has the line too
        log = tmp_path / "dc_server.log"
        assert wait_until(lambda: "already in use" in log.read_text(), 20), log.read_text()


@pytest.mark.parametrize("argv, words", [
    (["dc_server", "--listen", "IP:192.0.2.1:7"], ["192.0.2.1", "no interface"]),
    (["dc_server", "--listen", "IP:no-such-host.invalid:7"], ["unknown host name"]),
    (["dc_client", "--listen", "UNIX:/nonexistent/dir/scache", "--server", "UNIX:/tmp/x"],
     ["directory /nonexistent/dir does not exist"]),
    (["dcap-door", "--listen", "tcp:0:interface=127.0.0.1", "--root", "/proc/no/such/root"],
     ["/proc/no does not exist"]),
])
def test_twistd_form_failures_are_one_line(tmp_path, argv, words):
    out = run(TWISTD + ["-n", "--pidfile="] + argv, tmp_path)
    line = one_clear_line(out, *words)
    assert line.startswith(argv[0] + ": ")


def test_unwritable_state_directory():
    tmp_path = Path(tempfile.mkdtemp(prefix="startup-"))
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    kw = {}
    if os.getuid() == 0:
        os.chmod(tmp_path, 0o755)
        kw = dict(user="nobody", group="nogroup", extra_groups=[])
        try:
            probe = subprocess.run([sys.executable, "-c", "import distcache"],
                                   capture_output=True, cwd="/", **kw)
        except PermissionError:
            pytest.skip(f"user nobody may not run {sys.executable}")
        if probe.returncode:
            pytest.skip("user nobody cannot use this interpreter and checkout")
    out = run(TWISTD +
              ["-n", "--pidfile=", "--logfile=-", "dcap-door", "--listen",
               "tcp:0:interface=127.0.0.1", "--root", str(parent / "state")], "/", **kw)
    shutil.rmtree(tmp_path, ignore_errors=True)
    line = one_clear_line(out, str(parent / "state"))
    assert "not writable" in line and "owner or mode" in line


@functools.lru_cache(maxsize=None)
def twistd_fails_on_usage_errors():
    """Whether this Twisted's twistd exits non-zero after a usage error.

    Releases up to 26.4 (the newest for Python 3.9, so PyPy 3.9's) print the error and
    exit 0; later ones exit 1.  The message is the same either way.
    """
    return run(TWISTD + ["--no-such-option"], "/").returncode != 0


def test_bad_batch_or_poollist_ends_with_the_line_naming_it(tmp_path):
    """twistd prints its usage first; the last line names the file, line and reason."""
    batch = tmp_path / "door.batch"
    batch.write_text("set context dCap-openTimeout forever\n")
    missing = tmp_path / "none.poollist"
    for option, path, words in (("--batch", batch, f"{batch}:1: openTimeout"),
                                ("--poollist", missing, f"{missing}: cannot read")):
        out = run(TWISTD + ["-n", "--pidfile=", "dcap-door", option, str(path)], tmp_path)
        assert "Traceback" not in out.stdout + out.stderr
        assert out.returncode != 0 or not twistd_fails_on_usage_errors(), out.stdout
        assert words in out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("flag", ["-h", "-help", "-?"])
@pytest.mark.parametrize("tool", ["dc_server", "dc_client", "dc_snoop"])
def test_c_help_lists_the_c_flags(tmp_path, tool, flag):
    out = run(c_form(tool) + [flag], tmp_path)
    assert out.returncode == 0
    for word in ("-listen", "-daemon", "-pidfile FILE", "-user USER", "-logfile FILE",
                 "-version", f"Usage: {tool}"):
        assert word in out.stdout
    assert "--nodaemon" not in out.stdout and "--listen" not in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["-bogus"], "dc_server: -bogus is not a dc_server flag (dc_server -h lists them)"),
    (["--bogus"], "dc_server: --bogus is not a dc_server flag (dc_server -h lists them)"),
    (["-listen"], "dc_server: -listen needs a value"),
    (["-pidfile"], "dc_server: -pidfile needs a value"),
    (["-sessions", "5"], "dc_server: -listen ADDR is required"),
    (["-listen", "IP:127.0.0.1:0", "-sessions", "x"],
     "dc_server: -sessions takes a whole number, not 'x'"),
    (["-listen", "IP:127.0.0.1:0", "-user", "no-such-user-here"],
     "dc_server: -user: no such user 'no-such-user-here'"),
    (["stray"], "dc_server: unexpected argument 'stray' (dc_server -h lists the flags)"),
])
def test_c_form_errors_name_the_flag_as_typed(tmp_path, argv, message):
    out = run(c_form("dc_server") + argv, tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == message
    assert "--nodaemon" not in out.stderr


@pytest.mark.parametrize("argv, expected", [
    (c_form("dc_server") + ["-version"], "dc_server"),
    (c_form("dc_client") + ["-version"], "dc_client"),
    (c_form("dc_snoop") + ["--version"], "dc_snoop"),
    ([sys.executable, "-m", "distcache.loadtest", "-version"], "dc_test"),
    (TWISTD + ["dc_server", "--version"], "dc_server"),
    (TWISTD + ["dc_client", "--version"], "dc_client"),
    (TWISTD + ["dc_snoop", "--version"], "dc_snoop"),
    (TWISTD + ["dcap-door", "--version"], "dcap-door"),
    ([sys.executable, "-c", "from distcache.dcap.admin import main; main()", "--version"],
     "dcap-admin"),
])
def test_every_command_prints_this_projects_version(tmp_path, argv, expected):
    out = run(argv, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{expected} (distcache-twisted) {__version__}"


def start_door(tmp_path, port, *extra):
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "dcap-door", "--listen", f"tcp:{port}:interface=127.0.0.1",
                  "--root", str(tmp_path / "root")] + list(extra),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "DCAP door policy" in line:
            break
    # the policy line is the last of start-up (the port warning, if any, comes before it);
    # read on from the same buffered pipe (communicate() with a timeout would skip it)
    proc.terminate()
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    return "".join(lines) + rest


def test_door_logs_version_policy_and_port_warning(tmp_path):
    log = start_door(tmp_path, 0,
                     "--batch", str(ROOT / "conf" / "dcap.batch"), "--keep-alive", "30",
                     "--portrange", "33115:33145", "--anonymous-access", "FULL")
    assert f"dcap-door {__version__} started" in log
    [policy] = [line for line in log.splitlines() if "DCAP door policy" in line]
    assert "openTimeout 300s (" + str(ROOT / "conf" / "dcap.batch") in policy
    assert "keepAlive 30s" in policy  # the option wins over the batch file
    assert "data port first free of 33115:33145" in policy and "anonymous access FULL" in policy
    assert "check strict" in policy and "buffers send" in policy
    [listening] = [line for line in log.splitlines() if "DCAP door listening on" in line]
    port = int(re.search(r"listening on \S*?(\d+),", listening).group(1))
    warned = "dccp 2.47 cannot reach ports above 32767" in log
    assert warned == (port > 32767), log


def test_door_on_a_low_port_gives_no_warning(tmp_path):
    log = start_door(tmp_path, free_low_port())
    assert "DCAP door policy" in log and "openTimeout none" in log
    assert "cannot reach ports above" not in log
