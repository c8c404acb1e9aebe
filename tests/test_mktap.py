"""dc-mktap: tap files of plain, versioned configuration that twistd -f runs."""

import os
import pickle
import pickletools
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from distcache import __version__, mktap
from distcache.blocking import SessionCache
from distcache.replies import CacheError
from polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
MKTAP = [sys.executable, "-m", "distcache.mktap"]


def make_tap(cwd, *argv):
    out = subprocess.run(MKTAP + list(argv), cwd=cwd, capture_output=True, text=True,
                         timeout=60)
    return out


def globals_in(path):
    """Every global a pickle refers to (what unpickling would import and call)."""
    names = []
    for op, arg, _ in pickletools.genops(Path(path).read_bytes()):
        if op.name in ("GLOBAL", "STACK_GLOBAL"):
            names.append(arg)
    return names


@pytest.mark.parametrize("plugin, argv", [
    ("dc_server", ["--listen", "UNIX:{d}/s.sock", "--sessions", "100"]),
    ("dc_client", ["--listen", "UNIX:{d}/c.sock", "--server", "UNIX:{d}/s.sock"]),
    ("dc_snoop", ["--listen", "UNIX:{d}/n.sock", "--server", "UNIX:{d}/s.sock"]),
    ("dcap-door", ["--listen", "tcp:0:interface=127.0.0.1", "--root", "{d}/dcap",
                   "--open-timeout", "30"]),
])
def test_tap_is_plain_configuration_mode_0600(sockdir, plugin, argv):
    argv = [a.format(d=sockdir) for a in argv]
    tap = os.path.join(sockdir, "x.tap")
    out = make_tap(sockdir, plugin, *argv, "-o", tap)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(os.stat(tap).st_mode) == 0o600
    assert globals_in(tap) == ["distcache.mktap load_tap"]
    payload = pickletools.optimize(Path(tap).read_bytes())
    [(_, args)] = [pickle.loads(payload, fix_imports=False).tap.__reduce__()]
    assert args[0] == {"marker": mktap.MARKER, "format": mktap.FORMAT, "plugin": plugin,
                       "argv": argv, "written_by": args[0]["written_by"]}


def run_until(proc, marker, timeout=30):
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError("".join(seen))


def added(cache, key, value):
    """ADD once dc_client has reached its server (before, it answers with empty replies)."""
    try:
        return cache.add(key, value, 60000)
    except CacheError:
        return False


def test_twistd_runs_the_taps_in_the_foreground(sockdir):
    server = os.path.join(sockdir, "s.sock")
    client = os.path.join(sockdir, "c.sock")
    make_tap(sockdir, "dc_server", "--listen", f"UNIX:{server}", "-o", "server.tap")
    make_tap(sockdir, "dc_client", "--listen", f"UNIX:{client}", "--server", f"UNIX:{server}",
             "--retry", "200", "-o", "client.tap")
    procs = [subprocess.Popen(TWISTD + ["-n", "--pidfile=", "-f", tap], cwd=sockdir,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for tap in ("server.tap", "client.tap")]
    try:
        assert wait_until(lambda: os.path.exists(server) and os.path.exists(client), 20)
        cache = SessionCache(f"UNIX:{client}")
        assert wait_until(lambda: added(cache, b"session-id", b"der"), 20)
        assert cache.get(b"session-id") == b"der"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=20)


def test_twistd_runs_a_tap_as_a_daemon(sockdir):
    server = os.path.join(sockdir, "s.sock")
    make_tap(sockdir, "dc_server", "--listen", f"UNIX:{server}", "-o", "server.tap")
    pidfile = os.path.join(sockdir, "server.pid")
    out = subprocess.run(TWISTD + ["--pidfile", pidfile, "--logfile", "server.log", "-f",
                                   "server.tap"], cwd=sockdir, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert wait_until(lambda: os.path.exists(pidfile) and os.path.exists(server), 20)
    pid = int(Path(pidfile).read_text())
    try:
        cache = SessionCache(f"UNIX:{server}")
        assert cache.add(b"id-daemon", b"x", 60000) and cache.get(b"id-daemon") == b"x"
    finally:
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not os.path.exists(pidfile), 20)
    assert f"dc_server {__version__} started" in (Path(sockdir) / "server.log").read_text()


class FutureTap(mktap.Tap):
    def payload(self):
        return dict(super().payload(), format=99, written_by="dc-mktap (distcache-twisted) 9")


class ForeignTap(mktap.Tap):
    def payload(self):
        return {"plugin": "dc_server", "argv": ["--listen", "IP:0"]}


@pytest.mark.parametrize("tap, words", [
    (FutureTap("dc_server", ["--listen", "IP:127.0.0.1:0"]),
     "this tap file has format 99 (dc-mktap (distcache-twisted) 9); distcache-twisted"),
    (ForeignTap("dc_server", []), "this tap file was not written by dc-mktap"),
])
def test_other_taps_are_refused_with_one_line(tmp_path, tap, words):
    path = tmp_path / "other.tap"
    path.write_bytes(pickle.dumps(tap, protocol=2))
    out = subprocess.run(TWISTD + ["-n", "--pidfile=", "-f", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_service_pickled_without_the_format_mark_is_refused(tmp_path):
    from twisted.application import service

    from distcache import server_tap
    from distcache.configured import FORMAT_KEY

    application = service.Application("old")
    options = server_tap.Options()
    options.parseOptions(["--listen", "IP:127.0.0.1:0"])
    server_tap.makeService(options).setServiceParent(application)
    data = pickle.dumps(application, protocol=2)
    unmarked = data.replace(FORMAT_KEY.encode(), b"x" * len(FORMAT_KEY))
    assert unmarked != data
    path = tmp_path / "old.tap"
    path.write_bytes(unmarked)
    out = subprocess.run(TWISTD + ["-n", "--pidfile=", "-f", str(path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert "dc_server: this pickled configuration has no format mark" in out.stderr


@pytest.mark.parametrize("argv, words", [
    (["dc_server", "--bogus", "-o", "x.tap"], "dc-mktap dc_server: option --bogus not recognized"),
    (["dc_server", "--listen", "IP:0"], "-o FILE is required"),
    (["dc_server", "--listen", "IP:0", "-o"], "-o needs a value"),
    (["nope", "-o", "x.tap"], "'nope' is not a plugin"),
])
def test_mktap_refuses_bad_command_lines(tmp_path, argv, words):
    out = make_tap(tmp_path, *argv)
    assert out.returncode == 2 and words in out.stderr
    assert not (tmp_path / "x.tap").exists()


def test_mktap_version_and_help(tmp_path):
    from distcache import __version__
    out = make_tap(tmp_path, "--version")
    assert out.stdout.strip() == f"dc-mktap (distcache-twisted) {__version__}"
    out = make_tap(tmp_path, "--help")
    assert "mode 0600" in out.stdout and "runs code" in out.stdout
