"""A failed overwrite keeps the earlier version, end to end with the real dccp.

After a failed write dccp sends ``unlink`` for its destination.  The door
answers an unlink of a path whose write just failed on the same control
connection by removing what that write left (nothing: a failed upload is
discarded), so the version the door kept survives dccp's clean-up.
"""

import os
import subprocess

import pytest

from interop_support import TRUST_LOCAL, Door, dccp
from distcache.dcap.namespace import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")

MiB = 1 << 20


@pytest.fixture
def small_pool_door(tmp_path):
    """A door whose pool lives on an 8 MiB tmpfs."""
    pool_dir = tmp_path / "root" / "pool"
    pool_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(pool_dir)], check=True)
    door = None
    try:
        door = Door(str(tmp_path), *TRUST_LOCAL, "--anonymous-access", "FULL",
                    "--allow-truncate")
        yield door
    finally:
        if door is not None:
            door.stop()
        subprocess.run(["umount", "-l", str(pool_dir)], check=True)


def test_a_write_that_fills_the_pool_keeps_the_earlier_version(small_pool_door, tmp_path):
    door = small_pool_door
    door.storage().namespace.mkdir("/full", ROOT, 0o755)
    old = os.urandom(3 * MiB)
    (tmp_path / "old").write_bytes(old)
    rc, out = dccp(tmp_path / "old", door.url("/full/data"))
    assert rc == 0, out
    (tmp_path / "new").write_bytes(os.urandom(7 * MiB))
    rc, out = dccp("-d", "6", tmp_path / "new", door.url("/full/data"))
    assert rc != 0, out
    assert out.count('client unlink "dcap://127.0.0.1/full/data"') == 2  # dccp's clean-up
    assert door.read("/full/data") == old
    log = door.log_text()
    assert "unlink /full/data after its failed write" in log
    # the pool holds the old version only: the failed upload is gone
    assert os.listdir(os.path.join(door.root, "pool", "incoming")) == []
    # the next overwrite that fits succeeds
    (tmp_path / "newer").write_bytes(b"newer")
    rc, out = dccp(tmp_path / "newer", door.url("/full/data"))
    assert rc == 0, out
    assert door.read("/full/data") == b"newer"

