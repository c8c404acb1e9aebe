"""dc_server's command lines: twistd options, the C tool's flags, and start-up failures."""

import os
import stat
import signal
import socket
import subprocess
import sys

import pytest
from twisted.python import usage

from distcache.cflags import twistd_argv
from distcache.server_tap import Options
from netutil import blocking_exchange, free_port
from polling import wait_until
from vectors import transcript

GOLDEN = transcript("distcache-c-golden.log")
REQUESTS = b"".join(d for _, direction, d in GOLDEN if direction == "C>S")
REPLIES = b"".join(d for _, direction, d in GOLDEN if direction == "S>C")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
DC_SERVER = [sys.executable, "-c", "from distcache.cflags import dc_server; dc_server()"]


def parse(*argv):
    o = Options()
    o.parseOptions(list(argv))
    return o


def test_options_defaults_and_forms():
    o = parse("--listen", "UNIX:/tmp/x", "--listen", "tcp:9999", "--listen", "IP::8000",
              "--listen", "IPv6:[::1]:8001")
    assert o["listen"] == ["UNIX:/tmp/x", "tcp:9999", "IP::8000", "IPv6:[::1]:8001"]
    assert o["sessions"] == 512 and o["progress"] == 0
    assert parse("--listen", "IP:1", "--sessions", "1000000")["sessions"] == 1000000


@pytest.mark.parametrize("argv,message", [
    ([], "--listen ADDR is required"),
    (["--listen", "nowhere"], "no prefix"),
    (["--listen", "IP:host:notaport"], "bad port"),
    (["--listen", "IP:1", "--sessions", "0"], "at least 1"),
    (["--listen", "IP:1", "--sessions", "many"], "whole number"),
    (["--listen", "IP:1", "--sockperms", "999"], "octal"),
    (["--listen", "IP:1", "--sockowner", "no-such-user-here"], "no such user"),
])
def test_bad_options(argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_c_flags_translate_to_twistd():
    assert twistd_argv("dc_server", ["-listen", "UNIX:/x", "-sessions", "9", "-killable"]) == [
        "--nodaemon", "--pidfile=", "dc_server", "--listen", "UNIX:/x", "--sessions", "9",
        "--killable"]
    argv = twistd_argv("dc_server", ["-daemon", "-pidfile", "/run/x.pid", "-user", "root",
                                     "-listen", "IP:9"])
    assert argv[0] == "--logfile=" + os.path.abspath("dc_server.log")
    assert "--pidfile=/run/x.pid" in argv and argv[argv.index("--uid") + 1] == "0"
    argv = twistd_argv("dc_server", ["-daemon", "-syslog", "-listen", "IP:9"])
    assert argv[:3] == ["--syslog", "--prefix", "dc_server"]
    argv = twistd_argv("dc_server", ["-logfile", "/var/log/x.log", "-listen", "IP:9"])
    assert argv[:2] == ["--nodaemon", "--logfile=/var/log/x.log"]


def run_server(cmd, tmp_path, *args):
    return subprocess.Popen(cmd + list(args), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_twistd_plugin_serves_and_logs_activity(tmp_path):
    path = str(tmp_path / "s.sock")
    port = free_port()
    proc = run_server(TWISTD, tmp_path, "-n", "--pidfile=", "dc_server", "--listen",
                      f"UNIX:{path}", "--listen", f"IP:127.0.0.1:{port}")
    try:
        assert wait_until(lambda: os.path.exists(path))
        assert blocking_exchange(socket.AF_UNIX, path, REQUESTS, len(REPLIES)) == REPLIES
        assert blocking_exchange(socket.AF_INET, ("127.0.0.1", port), REQUESTS,
                                 len(REPLIES)) == REPLIES
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "Info, total operations =      16" in out
    # twistd ends by re-raising the signal it stopped on, as a shell expects
    assert proc.returncode == -signal.SIGTERM


def test_c_command_line_with_killable(tmp_path):
    path = str(tmp_path / "c.sock")
    proc = run_server(DC_SERVER, tmp_path, "-listen", f"UNIX:{path}", "-sessions", "3",
                      "-killable")
    try:
        assert wait_until(lambda: os.path.exists(path))
        assert blocking_exchange(socket.AF_UNIX, path, REQUESTS, len(REPLIES)) == REPLIES
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "3 sessions at most" in out


@pytest.mark.parametrize("args", [
    ["-listen", "bogus"],
    ["-sessions", "5"],
])
def test_bad_c_command_line_exits_non_zero(tmp_path, args):
    proc = run_server(DC_SERVER, tmp_path, *args)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "listen" in out


def test_start_up_failure_exits_non_zero(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        proc = run_server(DC_SERVER, tmp_path, "-listen", f"IP:127.0.0.1:{port}")
        out, _ = proc.communicate(timeout=20)
    finally:
        holder.close()
    assert proc.returncode != 0
    assert "already in use" in out and "Traceback" not in out


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_socket_ownership_applied_before_privileges_drop(tmp_path):
    import pwd

    nobody = pwd.getpwnam("nobody")
    os.chmod(tmp_path, 0o755)
    path = str(tmp_path / "owned.sock")
    proc = run_server(TWISTD, tmp_path, "-n", "--pidfile=", "--uid", str(nobody.pw_uid),
                      "--gid", str(nobody.pw_gid), "dc_server", "--listen", f"UNIX:{path}",
                      "--sockowner", "nobody", "--sockperms", "0600")
    try:
        assert wait_until(lambda: os.path.exists(path))
        st = os.stat(path)
        assert st.st_uid == nobody.pw_uid and stat.S_IMODE(st.st_mode) == 0o600
        # the server then runs as nobody (twistd drops privileges after binding)
        def uids():
            with open(f"/proc/{proc.pid}/status") as f:
                line = next(line for line in f if line.startswith("Uid:"))
            return line.split()[1:3]
        assert wait_until(lambda: uids() == [str(nobody.pw_uid)] * 2), uids()
        assert blocking_exchange(socket.AF_UNIX, path, REQUESTS, len(REPLIES)) == REPLIES
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_systemd_socket_activation(tmp_path):
    """An inherited listening socket (systemd's LISTEN_FDS protocol) is served."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "activated.sock")
    listener.bind(path)
    listener.listen(16)
    fd = listener.fileno()
    twistd = " ".join(f"'{a}'" for a in TWISTD)
    script = (f"exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=cache exec {twistd} "
              f"-n --pidfile= dc_server --listen systemd:domain=UNIX:index=0")
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, pass_fds=(fd,),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    listener.close()
    try:
        assert blocking_exchange(socket.AF_UNIX, path, REQUESTS, len(REPLIES),
                                 timeout=20) == REPLIES
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "dc_server started" in out
