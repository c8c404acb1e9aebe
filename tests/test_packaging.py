"""What `pip install` puts where: the plugins, the manual pages and the example configuration,
and the .venv's editable install, which must need no deprecated setuptools mode."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = "distcache_twisted-{version}.data/data/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist),
                          str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deprecat" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    [path] = dist.glob("*.whl")
    return path


def test_wheel_holds_manual_pages_and_example_configuration(wheel):
    from distcache import __version__
    names = set(zipfile.ZipFile(wheel).namelist())
    data = DATA.format(version=__version__)
    for page in os.listdir(ROOT / "man"):
        section = page.rsplit(".", 1)[1]
        assert f"{data}share/man/man{section}/{page}" in names
    assert {f"{data}share/man/man1/dc_server.1", f"{data}share/man/man5/dcap-policy.5",
            f"{data}share/man/man8/dcap-door.8"} <= names
    doc = f"{data}share/doc/distcache-twisted/conf/"
    for name in ("local.tac", "try-local.sh", "dcap.batch", "pools.poollist"):
        assert doc + name in names
    for unit in os.listdir(ROOT / "conf" / "systemd"):
        assert f"{doc}systemd/{unit}" in names


def test_wheel_carries_the_plugins_and_twistd_lists_them(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/distcache_plugins.py" in names
    assert "twisted/plugins/dcap_plugins.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # Run twistd with the unpacked install only: the checkout is taken off sys.path.
    code = (
        "import os, sys\n"
        f"sys.path[:] = [p for p in sys.path if os.path.realpath(p or '.') != {str(ROOT)!r}]\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import distcache\n"
        f"assert distcache.__file__.startswith({str(site)!r}), distcache.__file__\n"
        "sys.argv = ['twistd', '--help']\n"
        "from twisted.scripts.twistd import run\n"
        "run()\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True)
    for plugin in ("dc_server", "dc_client", "dc_snoop", "dcap-door"):
        assert plugin in out.stdout, out.stdout + out.stderr


def test_editable_install_is_a_plain_pth_without_deprecation(tmp_path):
    """What the Makefile does to .venv: the checkout on sys.path through one .pth file."""
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--prefix",
                          str(tmp_path), "-e", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deprecat" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    [pth] = tmp_path.glob("lib/*/site-packages/__editable__.*.pth")  # python3.X or pypy3.X
    assert pth.read_text().strip() == str(ROOT)
    assert (tmp_path / "bin" / "dcap-admin").exists()


def test_checkout_on_the_path_lists_the_plugins(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                          "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    for plugin in ("dc_server", "dc_client", "dc_snoop", "dcap-door"):
        assert plugin in out.stdout
