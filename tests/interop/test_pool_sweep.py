"""At start the door removes pool data that no namespace entry owns, and says so."""

import os

from interop_support import TRUST_LOCAL, Door, dccp
from distcache.dcap.names import pnfsid_of
from distcache.dcap.pool import open_pool


def test_a_starting_door_sweeps_orphaned_data_and_logs_it(tmp_path):
    root = str(tmp_path / "root")
    pool = open_pool(root, fsync=False)
    orphan = pnfsid_of(4242)  # data placed by a door that crashed before its commit
    with open(os.path.join(pool.data_dir, orphan), "wb") as f:
        f.write(b"o" * 1234)
    pool.namespace.close()
    door = Door(str(tmp_path), *TRUST_LOCAL, "--anonymous-access", "FULL")
    try:
        log = door.log_text()
        assert "pool sweep: removed %s (1234 bytes)" % orphan in log
        assert "pool sweep: 1 orphaned data file(s) removed" in log
        assert not os.path.exists(os.path.join(root, "pool", "data", orphan))
        src = tmp_path / "src"
        src.write_bytes(b"after the sweep")
        rc, out = dccp(src, door.url("/after"))
        assert rc == 0, out
        assert door.read("/after") == b"after the sweep"
    finally:
        door.stop()
