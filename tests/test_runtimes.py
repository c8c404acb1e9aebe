"""Both runtimes stay usable: the sources parse as Python 3.9 (PyPy 3.9's language), and
the Makefile gives PyPy its own environment and constraints."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("distcache", "tests", "bench", "twisted") for p in (ROOT / d).rglob("*.py")
                 if "__pycache__" not in p.parts) + sorted((ROOT / "conf").glob("*.tac"))


def test_there_are_sources_to_check():
    assert any(p.name == "wire.py" for p in SOURCES) and any(p.suffix == ".tac" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_parses_as_python_3_9(path):
    ast.parse(path.read_text(), str(path), feature_version=(3, 9))


def test_python_3_9_check_refuses_newer_syntax():
    """The check above is a real one: a match statement is 3.10 syntax."""
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=(3, 9))


def make_dry_run(*args):
    if shutil.which("make") is None:
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "-B", "test", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("python", ["pypy3", "/opt/nowhere/pypy3"])
def test_make_gives_pypy_its_own_environment_and_constraints(python):
    """By the interpreter's answer, or by its name when it is not installed yet."""
    commands = make_dry_run(f"PYTHON={python}")
    assert ".venv-pypy/bin/python -m pip install --quiet -c constraints-pypy.txt -e" in commands
    assert ".venv-pypy/bin/python -m pytest" in commands


def test_make_keeps_cpython_in_venv_without_constraints():
    commands = make_dry_run("PYTHON=/usr/bin/python3")
    assert "constraints-pypy.txt" not in commands
    assert ".venv/bin/python -m pytest" in commands



ASYNCIO_BEFORE_RUN = r'''
import asyncio
from distcache.store_redis import use_asyncio_reactor
use_asyncio_reactor()
from twisted.internet import reactor
lock = asyncio.Lock()  # made before the reactor runs, as redis-py's connection pool does

async def hold():
    async with lock:
        await asyncio.sleep(0.01)

def contend():
    done = asyncio.ensure_future(asyncio.gather(hold(), hold()))
    done.add_done_callback(lambda f: (print(repr(f.exception())), reactor.stop()))

reactor.callWhenRunning(contend)
reactor.callLater(10, reactor.stop)
reactor.run()
'''


def test_asyncio_objects_made_before_the_reactor_runs_belong_to_its_loop():
    """Python 3.9 (PyPy's) binds a lock to the current loop when it is made: that must be
    the reactor's, or a contended lock fails with 'attached to a different loop'."""
    out = subprocess.run([sys.executable, "-c", ASYNCIO_BEFORE_RUN], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "None", out.stdout + out.stderr
