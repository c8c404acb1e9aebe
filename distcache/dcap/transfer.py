"""One transfer: what an open moves, and how its outcome is reported.

A `Transfer` holds the file access of one open (a stored file to read, or
the pool's upload to write), the position the client works at, the
settings its data connection gets, and its outcome.  It knows nothing of
the data-channel protocol: the mover drives it, the door waits on it.
"""

from __future__ import annotations

import socket
import zlib
from typing import Optional

from twisted.internet import defer

from distcache.dcap.checksum import ADLER32_START, BLOCK_SIZE
from distcache.dcap.errors import RC_DISK_IO, TransferError

#: Bytes asked of a data socket per read (Twisted's default is 64 KiB):
#: fewer trips through the reactor for a write's DATA blocks.
RECEIVE_SIZE = 256 * 1024

#: Linux's TCP_QUICKACK (None elsewhere): acknowledge what arrived at once.
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def ack_now(transport) -> None:
    """Acknowledge the bytes just read at once instead of after the delayed-ACK timer.

    A client writes a DATA header, then the block in a second small write
    that Nagle holds until the header is acknowledged; the mover answers
    nothing to a header, so without this every short block (a small file,
    the tail of a large one) waits the peer's 40 ms delayed-ACK timer.
    Linux clears the flag by itself, so it is set again after each read.
    """
    if TCP_QUICKACK is None:
        return
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)
        except OSError:
            pass


class Transfer:
    """What one open moves, and its outcome.

    `source` is a readable binary file (reads) or None; `upload` is the
    pool's Upload (writes) or None.  `policy`, `buffers` and `watch` are the
    door's: `policy.prepare(transport, transfer)` sets up the data socket
    from `buffers` and starts the open's deadline `watch` on its data phase.
    `block_size` defaults to the buffers' I/O size.

    The outcome is decided once, by `end(error)`: `outcome` then fires with
    None (success) or the TransferError, and `ended` is true.
    """

    def __init__(self, sid: int, *, source=None, upload=None, size: int = 0, label: str = "",
                 policy=None, buffers=None, watch=None, block_size: Optional[int] = None):
        self.sid = sid
        self.source = source
        self.upload = upload
        self.size = size
        self.label = label
        self.policy = policy
        self.buffers = buffers
        self.watch = watch
        if block_size is None:
            block_size = getattr(buffers, "io", None) or BLOCK_SIZE
        self.block_size = block_size
        self.position = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Seconds the mover spent answering this transfer's requests (not
        #: waiting for the client): the data side of the door's share.
        self.busy = 0.0
        self.outcome: defer.Deferred = defer.Deferred()
        # The first block that could not be stored: the file has a hole,
        # so every later FIN and the CLOSE report it and nothing commits.
        self.write_error: Optional[TransferError] = None
        self._transport = None
        # running adler32, valid while the file is written front to back
        self._adler: Optional[int] = ADLER32_START if size == 0 else None
        self._fpos = -1

    @property
    def ended(self) -> bool:
        """True once the outcome is decided."""
        return self.outcome.called

    @property
    def writable(self) -> bool:
        return self.upload is not None

    # -- the data connection --------------------------------------------

    def attach(self, transport) -> None:
        """Take transport as this transfer's data connection and set it up.

        TCP_NODELAY keeps small ACK/FIN replies from waiting on Nagle and
        reads take RECEIVE_SIZE bytes at a time; the door's policy then sets
        the socket buffer sizes and starts the open's deadline watch.
        """
        self._transport = transport
        if hasattr(transport, "setTcpNoDelay"):
            try:
                transport.setTcpNoDelay(True)
            except OSError:
                pass
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = RECEIVE_SIZE
        if self.policy is not None:
            self.policy.prepare(transport, self)

    # -- file access ---------------------------------------------------

    def read_at(self, offset: int, count: int) -> bytes:
        f = self.upload.file if self.upload is not None else self.source
        f.seek(offset)
        self._fpos = -1
        return f.read(count)

    def write_at(self, offset: int, data: bytes) -> None:
        f = self.upload.file
        if offset != self._fpos:
            f.seek(offset)
        if self._adler is not None:
            if offset == self.size:
                self._adler = zlib.adler32(data, self._adler)
            else:
                self._adler = None
        f.write(data)
        end = offset + len(data)
        self._fpos = end
        if end > self.size:
            self.size = end

    def store(self, data) -> None:
        """Write received DATA bytes at the position; a failure is kept, not raised."""
        if self.write_error is not None:
            return
        try:
            self.write_at(self.position, data)
        except OSError as e:
            self.write_error = TransferError(RC_DISK_IO, "write failed: %s" % (e.strerror or e,), "EIO")
            return
        self.position += len(data)
        self.bytes_in += len(data)

    # -- outcome -------------------------------------------------------

    def commit(self, client_adler32: Optional[int]):
        """Make a written file visible; a hole or a checksum mismatch discards it.

        None when done at once, or a Deferred when the pool's workers sync and
        checksum off the reactor; failures are TransferErrors either way.
        """
        if self.write_error is not None:
            if self.upload is not None:
                self.upload.abort()
            raise self.write_error
        if self.upload is None:
            return None
        try:
            result = self.upload.commit(size=self.size, adler32=self._adler,
                                        client_adler32=client_adler32)
        except Exception as e:
            raise _as_transfer_error(e)
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(lambda _: None,
                                       lambda f: _raise(_as_transfer_error(f.value)))
        return None

    def end(self, error: Optional[TransferError] = None) -> None:
        """Decide the outcome (once; later calls do nothing).

        A failed transfer discards its partial write (an earlier version of
        the file, if any, stays); either way the source file is closed.
        """
        if self.ended:
            return
        if error is not None and self.upload is not None:
            self.upload.abort()
        if self.source is not None:
            self.source.close()
            self.source = None
        self.outcome.callback(error)

    def kill(self, reason: str) -> None:
        """End the transfer from the door's side (client gone, timeout)."""
        if self._transport is not None:
            self._transport.abortConnection()
        self.end(TransferError(RC_DISK_IO, reason, "EIO"))


def _as_transfer_error(e: BaseException) -> TransferError:
    if isinstance(e, TransferError):
        return e
    return TransferError(getattr(e, "rc", RC_DISK_IO), getattr(e, "message", str(e)),
                         getattr(e, "posix", "EIO"))


def _raise(e: BaseException):
    raise e
