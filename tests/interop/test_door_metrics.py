"""A `twistd dcap-door` with --metrics and --transfer-log, driven by the real dccp.

A file is written and read back through the door; /metrics is scraped over
HTTP and parsed with prometheus_client's parser; the transfer log's JSON
lines are read from the file the door writes.
"""

import json
import os
import urllib.request
import zlib

from prometheus_client.parser import text_string_to_metric_families

from netutil import free_port
from polling import wait_until

from interop_support import TRUST_LOCAL, Door, dccp


def start_door(tmp, log_path):
    """A door serving metrics on a free port (another is tried if that one was taken)."""
    for _ in range(5):
        port = free_port()
        try:
            return Door(tmp, *TRUST_LOCAL, "--anonymous-access", "FULL", "--metrics",
                        "tcp:%d:interface=127.0.0.1" % port, "--transfer-log", log_path), port
        except RuntimeError:
            continue
    raise RuntimeError("no door with metrics started")


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def records(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def test_dccp_write_and_read_are_counted_and_logged(tmp_path):
    log_path = str(tmp_path / "transfers.log")
    door, port = start_door(str(tmp_path), log_path)
    try:
        before = scrape(port)
        assert before[("dcap_door_opens_total", (("mode", "w"), ("result", "ok")))] == 0
        data = os.urandom(3 * (1 << 20) + 11)
        src = tmp_path / "src"
        src.write_bytes(data)
        rc, out = dccp(src, door.url("/billed"))
        assert rc == 0, out
        back = tmp_path / "back"
        rc, out = dccp(door.url("/billed"), back)
        assert rc == 0, out
        assert back.read_bytes() == data

        written, read = wait_until(lambda: len(records(log_path)) >= 2 and records(log_path))
        entry = door.entry("/billed")
        adler = "%08x" % zlib.adler32(data)
        assert entry.adler32 == zlib.adler32(data)
        for record, mode in ((written, "w"), (read, "r")):
            assert record["mode"] == mode and record["result"] == "ok", record
            assert record["path"] == "/billed" and record["pnfsid"] == entry.pnfsid
            assert record["adler32"] == adler
            assert record["bytes"] == len(data)
            assert record["client"].startswith("127.0.0.1:")
            assert 0 <= record["duration"] < 120
        assert written["bytes_in"] == len(data) and read["bytes_out"] == len(data)
        assert written["time"] <= read["time"]

        m = scrape(port)
        assert m[("dcap_door_opens_total", (("mode", "w"), ("result", "ok")))] == 1
        assert m[("dcap_door_opens_total", (("mode", "r"), ("result", "ok")))] == 1
        assert m[("dcap_door_opens_total", (("mode", "r"), ("result", "failed")))] == 0
        assert m[("dcap_door_received_bytes_total", ())] == len(data)
        assert m[("dcap_door_sent_bytes_total", ())] == len(data)
        assert m[("dcap_door_transfers_in_progress", ())] == 0
    finally:
        door.stop()
    text = door.log_text()
    assert "Traceback" not in text
    assert "DCAP door metrics at http://127.0.0.1:%d/metrics" % port in text
    assert "DCAP door transfer log %s" % log_path in text
