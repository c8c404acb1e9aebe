"""Open options with the real dccp: -X passes them in its open request.

A file written with ``-X "-access-latency=ONLINE -retention-policy=REPLICA"``
records both (and is then never flushed); an open naming a mover queue whose
one place another open holds waits for it, then completes.
"""

import threading

from interop_support import TRUST_LOCAL, dccp
from polling import wait_until
from rawclient import ControlClient

DATA = bytes(range(256)) * 64


def test_dccp_writes_a_file_with_its_latency_and_policy(doors, tmp_path):
    door = doors("--anonymous-access", "FULL", *TRUST_LOCAL, "--allow-access-latency",
                 "--allow-retention-policy")
    src = tmp_path / "src"
    src.write_bytes(DATA)
    rc, out = dccp("-X", "-access-latency=ONLINE -retention-policy=REPLICA", src,
                   door.url("/disk-only"), timeout=60)
    assert rc == 0, out
    entry = door.entry("/disk-only")
    assert (entry.access_latency, entry.retention_policy) == ("ONLINE", "REPLICA")
    assert not entry.flushable
    assert door.read("/disk-only") == DATA
    assert "-access-latency=ONLINE" in door.log_text()


def test_dccp_waits_in_a_full_io_queue_until_its_place_is_free(doors, tmp_path):
    door = doors("--anonymous-access", "FULL", *TRUST_LOCAL, "--io-queue", "slow=1")
    door.put("/q/a", DATA)
    door.put("/q/b", DATA)
    holder = ControlClient(door.port)
    reply = holder.ask('1 0 client open "dcap://127.0.0.1//q/a" r 127.0.0.1 1 -passive '
                       '-io-queue=slow -uid=0')
    assert " connect " in reply, reply
    result = {}

    def copy():
        result["out"] = dccp("-X", "-io-queue=slow", door.url("/q/b"), tmp_path / "b", timeout=60)

    worker = threading.Thread(target=copy)
    worker.start()
    try:
        assert wait_until(lambda: "waiting in io queue slow" in door.log_text(), timeout=30), \
            door.log_text()
        assert worker.is_alive() and not (tmp_path / "b").exists()
    finally:
        holder.close()  # the holder leaves: its place goes to the waiting dccp
        worker.join(60)
    rc, out = result["out"]
    assert rc == 0, out
    assert (tmp_path / "b").read_bytes() == DATA
