"""twistd --uid/--gid: the door keeps its state as the user it runs as, or refuses to start.

The namespace and pool are opened after twistd drops privileges, so a new
state directory belongs to that user; state the user could not write stops
the start with one line naming the path, instead of a door that listens and
then fails every write.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from interop_support import CHECKOUT, TRUST_LOCAL, dccp, free_low_port
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="--uid/--gid need root to drop from")


@pytest.fixture
def shared_dir():
    """A directory user nobody can reach and write (pytest's own are root's 0700)."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    probe = subprocess.run([sys.executable, "-c", "import distcache"], capture_output=True,
                           cwd="/", user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[])
    if probe.returncode:
        pytest.skip("user nobody cannot use this interpreter and checkout")
    path = tempfile.mkdtemp(prefix="door-user-")
    os.chmod(path, 0o777)
    yield path, nobody
    shutil.rmtree(path, ignore_errors=True)


def start(directory, root, port, *options):
    log = os.path.join(directory, "door.log")
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "-l", log, "--uid", "nobody", "--gid", "nogroup",
                  "dcap-door", "--listen", "tcp:%d:interface=127.0.0.1" % port, "--root", root,
                  "--no-fsync", "--anonymous-access", "FULL"] + list(options),
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, log


def read(log):
    try:
        with open(log) as f:
            return f.read()
    except OSError:
        return ""


def test_a_door_run_as_another_user_creates_its_state_as_that_user(shared_dir):
    directory, nobody = shared_dir
    root = os.path.join(directory, "state")
    port = free_low_port()
    proc, log = start(directory, root, port, *TRUST_LOCAL)
    try:
        deadline = time.monotonic() + 30
        while "DCAP door policy" not in read(log):
            assert proc.poll() is None, read(log) + proc.stderr.read()
            assert time.monotonic() < deadline, read(log)
            time.sleep(0.05)
        for name in ("", "namespace.db", "pool", "pool/data", "pool/incoming"):
            assert os.stat(os.path.join(root, name)).st_uid == nobody.pw_uid, name
        # written by a client whose uid the door believes: the write works as nobody
        pool = open_pool(root, fsync=False)
        pool.namespace.mkdir("/u", ROOT, 0o777)
        pool.namespace.close()
        src = os.path.join(directory, "src")
        with open(src, "wb") as f:
            f.write(b"written by the door's user")
        rc, out = dccp(src, "dcap://127.0.0.1:%d/u/f" % port)
        assert rc == 0, out + read(log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_state_the_user_cannot_write_refuses_the_start_with_one_line(shared_dir):
    directory, _ = shared_dir
    root = os.path.join(directory, "state")
    open_pool(root, fsync=False).namespace.close()  # made by root, as a first start as root would
    proc, log = start(directory, root, free_low_port())
    _, err = proc.communicate(timeout=60)
    text = read(log) + err
    assert proc.returncode != 0, text
    assert "Traceback" not in err, err
    assert "is not writable by uid %d" % pwd.getpwnam("nobody").pw_uid in text
    assert "DCAP door policy" not in text  # it never reported itself started
