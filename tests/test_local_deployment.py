"""The README's `make run` deployment (conf/local.tac) and its examples (conf/try-local.sh),
run as written by whoever runs the tests and, when that is root, by an ordinary user."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "conf" / "try-local.sh"
sys.path.insert(0, str(ROOT / "tests" / "interop"))

from interop_support import free_low_port  # noqa: E402

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def as_user(name):
    """subprocess arguments that run a child as the user `name`."""
    entry = pwd.getpwnam(name)
    return dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])


def test_readme_shows_the_examples_script_as_it_is():
    readme = (ROOT / "README.md").read_text()
    body = SCRIPT.read_text().split("\nset -eu\n", 1)[1]
    assert "sh conf/try-local.sh" in readme
    assert body.strip() in readme


def test_examples_never_copy_into_a_local_directory():
    """dccp 2.47 cannot copy into a local directory: every example names a file."""
    pages = [ROOT / "README.md", SCRIPT] + sorted((ROOT / "man").iterdir())
    for page in pages:
        for line in page.read_text().splitlines():
            m = re.search(r"dccp\s.*dcap://\S+\s+(\S+)\s*$", line)
            if m:
                assert not m.group(1).endswith("/"), f"{page.name}: {line}"


@pytest.fixture
def workdir(tmp_path):
    """A directory any user can reach (pytest's own sits below a private one)."""
    path = Path(tempfile.mkdtemp(prefix="try-local-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("who", ["self", "ordinary user"])
def test_examples_work_as_written_against_the_local_deployment(workdir, who):
    tmp_path = workdir
    user = {}
    if who == "ordinary user":
        if os.getuid() != 0:
            pytest.skip("running as an ordinary user already (the 'self' case)")
        user = as_user("nobody")
        try:
            probe = subprocess.run([sys.executable, "-c", "import distcache, twisted"],
                                   capture_output=True, **user)
        except PermissionError:
            pytest.skip(f"user nobody may not run {sys.executable}")
        if probe.returncode != 0:
            pytest.skip(f"user nobody cannot use {sys.executable} and this checkout")
        os.chown(tmp_path, user["user"], user["group"])
    (tmp_path / "tmp").mkdir()
    if user:
        os.chown(tmp_path / "tmp", user["user"], user["group"])
    port = free_low_port()
    env = dict(os.environ, DCAP_LISTEN=f"tcp:{port}:interface=127.0.0.1",
               DCAP_DOOR=f"127.0.0.1:{port}", TMPDIR=str(tmp_path / "tmp"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(TWISTD + ["--nodaemon", "--pidfile=", "-y",
                                      str(ROOT / "conf" / "local.tac")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **user)
    try:
        assert wait_until(lambda: (tmp_path / "var" / "scache").exists()
                        and (tmp_path / "var" / "dc_server.sock").exists()
                        or proc.poll() is not None, 30)
        assert proc.poll() is None, proc.communicate()[0]
        out = subprocess.run(["sh", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=180, **user)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Info, all tests complete" in out.stdout
        assert out.stderr.count("+ dccp ") == 4
    finally:
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=30)
    assert "Info, total operations =" in log
