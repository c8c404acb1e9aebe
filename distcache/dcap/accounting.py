"""What the door counts, and the record it keeps of each finished transfer.

The door's hot paths only add to plain integers here; the Prometheus
collector (`distcache.metrics.DoorCollector`) reads them when scraped, and
the transfer log (`transferlog.py`) writes the records.  A transfer's record
is made once, when its open ends, from what the session knows then.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Optional

#: How an open ended, as the record and the metrics name it.
OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"          # openTimeout passed while the open waited
INTERRUPTED = "interrupted"  # openTimeout passed during a read: cut, the client resumes
CLIENT_GONE = "client_gone"
DOOR_STOPPING = "door_stopping"

RESULTS = (OK, FAILED, TIMEOUT, INTERRUPTED, CLIENT_GONE, DOOR_STOPPING)

#: How a `check` was answered.
CHECK_CACHED = "cached"
CHECK_NOT_CACHED = "not_cached"
CHECK_ERROR = "error"


class DoorCounters:
    """The door's running totals (plain integers, read at scrape time)."""

    def __init__(self):
        #: (mode, result) -> opens ended so
        self.opens: Counter = Counter()
        #: bytes of finished transfers; live transfers are added when scraped
        self.bytes_in = 0
        self.bytes_out = 0
        #: reads that had to wait for a stage from tape
        self.stage_waits = 0
        #: result -> checks answered so
        self.checks: Counter = Counter()

    def finished(self, record: dict) -> None:
        """Count one ended open from its record."""
        self.opens[(record["mode"], record["result"])] += 1
        self.bytes_in += record["bytes_in"]
        self.bytes_out += record["bytes_out"]

    def checked(self, result: str) -> None:
        self.checks[result] += 1


def adler32_text(value) -> Optional[str]:
    """An adler32 as dCache writes it: eight lower-case hex digits (None when unknown)."""
    if value is None:
        return None
    return "%08x" % (value,)


def transfer_record(session, client: str, result: str, error, now: float) -> dict:
    """The record of one ended open, as plain data (one JSON line in the log).

    ``session`` is the door's Session: its path, its transfer (bytes moved,
    and for a write the entry it committed) and the entry it read.  A write
    that did not commit has no pnfsid and no checksum.
    """
    transfer = session.transfer
    entry = getattr(session, "entry", None)
    upload = getattr(transfer, "upload", None)
    if upload is not None:
        entry = getattr(upload, "entry", None)
    started = getattr(session, "started", None)
    bytes_in = transfer.bytes_in if transfer is not None else 0
    bytes_out = transfer.bytes_out if transfer is not None else 0
    mode = session.request.args[1] if session.request is not None and \
        len(session.request.args) > 1 else "?"
    record = {
        "time": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
        "transfer": session.tid,
        "client": client,
        "path": session.path,
        "pnfsid": entry.pnfsid if entry is not None else None,
        "mode": mode,
        "bytes": bytes_in + bytes_out,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration": round(max(0.0, now - started), 6) if started is not None else 0.0,
        "result": result,
        "adler32": adler32_text(entry.adler32) if entry is not None else None,
    }
    if error is not None:
        record["rc"] = error.rc
        record["error"] = error.message
    return record
