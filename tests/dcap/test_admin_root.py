"""dcap-admin finds the door's state directory as the door does, and never makes an empty one
by accident when run from somewhere else."""

import os
import subprocess
import sys

from distcache import dcap_tap
from distcache.dcap import stateroot

ADMIN = [sys.executable, "-c", "from distcache.dcap.admin import main; main()"]


def run_admin(cwd, *argv, env=None):
    environ = {k: v for k, v in os.environ.items() if k != stateroot.ENV}
    environ.update(env or {})
    return subprocess.run(ADMIN + list(argv), cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=60)


def test_elsewhere_it_refuses_naming_root_and_creates_nothing(tmp_path):
    out = run_admin(tmp_path, "ls", "/")
    assert out.returncode == 2
    assert "--root" in out.stderr and "DCAP_ROOT" in out.stderr
    assert str(tmp_path / "var" / "dcap") in out.stderr
    assert "Traceback" not in out.stderr
    assert os.listdir(tmp_path) == []


def test_next_to_the_door_it_uses_var_dcap(tmp_path):
    (tmp_path / "var" / "dcap").mkdir(parents=True)
    out = run_admin(tmp_path, "mkdir", "/pnfs")
    assert out.returncode == 0, out.stderr
    out = run_admin(tmp_path, "--root", str(tmp_path / "var" / "dcap"), "ls", "/")
    assert "pnfs" in out.stdout


def test_dcap_root_is_used_by_the_door_and_by_dcap_admin(tmp_path, monkeypatch):
    state = tmp_path / "state"
    out = run_admin(tmp_path, "mkdir", "/from-env", env={stateroot.ENV: str(state)})
    assert out.returncode == 0, out.stderr
    assert (state).is_dir()
    monkeypatch.setenv(stateroot.ENV, str(state))
    options = dcap_tap.Options()
    options.parseOptions([])
    assert options["root"] == str(state)
    monkeypatch.delenv(stateroot.ENV)
    options = dcap_tap.Options()
    options.parseOptions([])
    assert options["root"] == os.path.join("var", "dcap")


def test_version():
    from distcache import __version__
    out = subprocess.run(ADMIN + ["--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"dcap-admin (distcache-twisted) {__version__}"
