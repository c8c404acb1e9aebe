"""One transfer: what an open moves, and how its outcome is reported.

A `Transfer` holds the file access of one open (a stored file to read, or
the pool's upload to write), the position the client works at, the
settings its data connection gets, and its outcome.  It knows nothing of
the data-channel protocol: the mover drives it, the door waits on it.
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from twisted.internet import defer

from distcache.dcap.checksum import ADLER32_START, BLOCK_SIZE, adler32_concat
from distcache.dcap.errors import RC_DISK_IO, TransferError
from distcache.dcap.uploadwriter import UploadWriter
from distcache.dcap.workers import INLINE

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
        # The sums of the batches the workers write, after _adler and in
        # order: [length, adler32, or a Deferred of it while a worker
        # writes and sums]; joined at commit.
        self._pieces: list = []
        # Writes to the upload go through this, made at the first one.
        self._writer: Optional[UploadWriter] = None
        #: Called with True when the data connection should stop being read
        #: (too many received bytes wait for the disk) and False when it may
        #: go on; the data channel sets it.  Without one the transport itself
        #: is paused and resumed.
        self.on_pressure = None

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
        """count bytes at offset; an upload's only once settled() has fired."""
        if self.upload is not None:
            return os.pread(self.upload.file.fileno(), count, offset)
        f = self.source
        f.seek(offset)
        return f.read(count)

    def _upload_writer(self) -> UploadWriter:
        if self._writer is None:
            f = self.upload.file
            f.flush()  # anything written through the file object goes first
            workers = getattr(getattr(self.upload, "pool", None), "workers", None) or INLINE
            self._writer = UploadWriter(f.fileno(), workers, on_pressure=self._pressure,
                                        on_error=self._write_failed,
                                        on_batch=self._batch_summed if self._adler is not None else None)
        return self._writer

    def _batch_summed(self, length: int, value) -> None:
        """A batch of appended bytes went to a worker, which sums it too."""
        if self._adler is None:
            return
        if isinstance(value, defer.Deferred):
            piece = [length, value]
            self._pieces.append(piece)

            def summed(result):
                piece[1] = result
                return result

            value.addCallback(summed)
        elif value is None:
            self._no_sum()
        elif not self._pieces:
            self._adler = adler32_concat(self._adler, value, length)
        else:
            self._pieces.append([length, value])

    def _no_sum(self) -> None:
        """The running checksum cannot be followed: the pool sums the file at commit."""
        self._adler = None
        self._pieces.clear()
        if self._writer is not None:
            self._writer.on_batch = None

    def _pressure(self, stop: bool) -> None:
        if self.on_pressure is not None:
            self.on_pressure(stop)
        elif self._transport is not None:
            (self._transport.pauseProducing if stop else self._transport.resumeProducing)()

    def _write_failed(self, e: OSError) -> None:
        if self.write_error is None:
            self.write_error = TransferError(RC_DISK_IO, "write failed: %s" % (e.strerror or e,), "EIO")

    def write_at(self, offset: int, data: bytes) -> None:
        """Write data at offset, through the pool's disk workers.

        data is kept until written and summed, so a mutable buffer is copied
        (the mover's are views of received bytes).  A failure of the disk
        shows as write_error, at once or by a later FIN or the CLOSE.
        """
        if not isinstance(data, bytes) and not (
                isinstance(data, memoryview) and isinstance(data.obj, bytes)):
            data = bytes(data)
        writer = self._upload_writer()
        if self._adler is not None and offset != self.size:
            self._no_sum()
        writer.write(offset, data)
        end = offset + len(data)
        if end > self.size:
            self.size = end

    def flush(self) -> None:
        """The client ended a DATA stream: write what waits without waiting for a full batch."""
        if self._writer is not None:
            self._writer.flush()

    def settled(self):
        """None when every stored byte is in the file (or failed), else a Deferred firing then."""
        if self._writer is None:
            return None
        return self._writer.when_idle()

    def _joined_adler(self):
        """The running adler32 with every piece in: a value, or a Deferred while workers sum."""
        pending = [p[1] for p in self._pieces if isinstance(p[1], defer.Deferred)]

        def join(_=None):
            if self._adler is None:
                return None
            adler = self._adler
            for length, value in self._pieces:
                if value is None:
                    return None  # a batch went unsummed: the pool sums the file
                adler = adler32_concat(adler, value, length)
            self._pieces.clear()
            self._adler = adler
            return adler

        if not pending:
            return join()
        return defer.gatherResults(pending, consumeErrors=True).addCallback(join)

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
        if self.upload is None:
            if self.write_error is not None:
                raise self.write_error
            return None
        written = self.settled()
        if written is not None:
            # The CLOSE is answered once the last batches are in the file.
            return written.addCallback(lambda _: self._commit_settled(client_adler32)).addErrback(
                lambda f: _raise(_as_transfer_error(f.value)))
        return self._commit_settled(client_adler32)

    def _commit_settled(self, client_adler32: Optional[int]):
        if self.write_error is not None:
            self.upload.abort()
            raise self.write_error
        if self.ended:
            raise TransferError(RC_DISK_IO, "transfer ended before its close", "EIO")
        adler = self._joined_adler()
        if isinstance(adler, defer.Deferred):
            result = adler.addCallback(self._commit_upload, client_adler32)
            return result.addCallbacks(lambda _: None,
                                       lambda f: _raise(_as_transfer_error(f.value)))
        result = self._commit_upload(adler, client_adler32)
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(lambda _: None,
                                       lambda f: _raise(_as_transfer_error(f.value)))
        return None

    def _commit_upload(self, adler, client_adler32):
        try:
            return self.upload.commit(size=self.size, adler32=adler, client_adler32=client_adler32)
        except Exception as e:
            raise _as_transfer_error(e)

    def end(self, error: Optional[TransferError] = None) -> None:
        """Decide the outcome (once; later calls do nothing).

        A failed transfer discards its partial write (an earlier version of
        the file, if any, stays); either way the source file is closed.
        """
        if self.ended:
            return
        if error is not None and self.upload is not None:
            self._abort_upload()
        if self.source is not None:
            self.source.close()
            self.source = None
        self.outcome.callback(error)

    def _abort_upload(self) -> None:
        """Discard the upload; a batch a worker is writing finishes first (it uses the file)."""
        writer = self._writer
        if writer is not None:
            writer.discard()
            running = writer.when_idle()
            if running is not None:
                upload = self.upload
                running.addCallback(lambda _: upload.abort())
                return
        self.upload.abort()

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
