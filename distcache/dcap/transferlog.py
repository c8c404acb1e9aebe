"""The door's transfer log: one JSON line per finished transfer (dCache's billing file).

Each record is appended when its transfer ends and the buffered file is
flushed, so the line is with the kernel at once; it is not fsynced (a
sync per transfer would stall the reactor), so a machine crash may lose
the last records, a door crash does not.

Log rotation needs no signal: before each record the path is looked up,
and when the file there is not the one open (logrotate moved it away, or
it was deleted) the log is reopened at the path, as the standard library's
WatchedFileHandler does.  A write that fails is logged once, and the door
goes on; the next record tries again.
"""

from __future__ import annotations

import json
import os

from twisted.logger import Logger

log = Logger()


class TransferLog:
    """Appends records to ``path``, reopening it when it was moved."""

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self._id = None
        self._failing = False

    def _open(self) -> None:
        self.close()
        f = open(self.path, "a", encoding="utf-8")
        st = os.fstat(f.fileno())
        self._file, self._id = f, (st.st_dev, st.st_ino)

    def _current(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n"
        try:
            if self._file is None or not self._current():
                self._open()
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            if not self._failing:
                log.warn("transfer log {path}: cannot write ({error}); records are lost "
                         "until it can", path=self.path, error=e)
            self._failing = True
            self.close()
            return
        if self._failing:
            log.info("transfer log {path}: writing again", path=self.path)
            self._failing = False

    def close(self) -> None:
        f, self._file, self._id = self._file, None, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
