"""Read replies: ACK, DATA blocks, end, FIN, without piling bytes up.

A read of a stored file goes from the file to the socket with os.sendfile
(`SendfileStream`), waiting for room through the reactor; anything else
(listings, uploads being read back, transports without a socket) streams
through a push producer in large blocks that the socket's back-pressure
pauses (`BufferedStream`).  Either stream calls `done()` once its reply is
written or handed to the transport; a connection that fails underneath
is aborted and the stream never calls `done()`.
"""

from __future__ import annotations

import io
import os
from typing import Callable, List, Optional, Tuple

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from distcache.dcap import mover_codec as mc
from distcache.dcap.errors import RC_DISK_IO, TransferError
from distcache.dcap.transfer import Transfer

log = Logger()

Ranges = List[Tuple[int, int]]


def make_stream(transport, transfer: Transfer, ranges: Ranges, cmd: int, done: Callable[[], None]):
    """The reply to a read of ranges, ready to `start()`."""
    if SendfileStream.usable(transport, transfer):
        return SendfileStream(transport, transfer, ranges, cmd, done)
    return BufferedStream(transport, transfer, ranges, cmd, done)


@implementer(IPushProducer)
class BufferedStream:
    """Send ranges as DATA blocks through the transport, as a push producer."""

    def __init__(self, transport, transfer: Transfer, ranges: Ranges, cmd: int, done: Callable[[], None]):
        self.transport = transport
        self.transfer = transfer
        self.ranges = list(ranges)
        self.cmd = cmd
        self._done = done
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        self.transport.write(mc.ack(self.cmd) + mc.DATA_HEADER)
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True

    def abandon(self) -> None:
        """The connection is gone: produce nothing more."""
        self.stopped = True

    def resumeProducing(self) -> None:
        self.paused = False
        transfer = self.transfer
        transport = self.transport
        while not self.paused and not self.stopped:
            if not self.ranges:
                self._end(None)
                return
            offset, count = self.ranges[0]
            if count <= 0:
                self.ranges.pop(0)
                continue
            try:
                data = transfer.read_at(offset, min(count, transfer.block_size))
            except OSError as e:
                self._end(TransferError(RC_DISK_IO, "read failed: %s" % (e.strerror or e,)))
                return
            if not data:
                self.ranges.pop(0)
                continue
            n = len(data)
            self.ranges[0] = (offset + n, count - n)
            transfer.position = offset + n
            transfer.bytes_out += n
            transport.writeSequence((mc.block_header(n), data))

    def _end(self, error: Optional[TransferError]) -> None:
        self.stopped = True
        t = self.transport
        t.unregisterProducer()
        if error is None:
            t.write(mc.DATA_END + mc.fin(self.cmd))
        else:
            t.write(mc.DATA_END + mc.fin_error(self.cmd, error.rc, error.message))
        self._done()


class SendfileStream:
    """Send file ranges as DATA blocks with os.sendfile: no copy through Python.

    Used for reads of stored files when the transport's own buffer is empty.
    While it runs the stream is the socket's only writer (the channel has
    paused reading and writes nothing else), registered with the reactor
    under the socket's descriptor; small framing bytes go out with plain
    sends.  A socket error aborts the connection like any transport error.
    """

    def __init__(self, transport, transfer: Transfer, ranges: Ranges, cmd: int, done: Callable[[], None]):
        self.transport = transport
        self.transfer = transfer
        self.reactor = transport.reactor
        self.sock = transport.socket
        self.file_fd = transfer.source.fileno()
        self.ranges = list(ranges)
        self.cmd = cmd
        self._done = done
        self.pending = mc.ack(cmd) + mc.DATA_HEADER
        self.block_left = 0  # bytes of the current block still to send
        self.stopped = False
        self.registered = False

    @staticmethod
    def usable(transport, transfer: Transfer) -> bool:
        """True when the read can bypass the transport's buffer."""
        source = transfer.source
        if not hasattr(os, "sendfile") or transfer.upload is not None:
            return False
        if getattr(transport, "socket", None) is None or getattr(transport, "reactor", None) is None:
            return False
        if not hasattr(source, "fileno") or isinstance(source, io.BytesIO):
            return False
        # Everything written earlier must be out, or bytes would be reordered.
        return (not transport.dataBuffer[transport.offset:]
                and not getattr(transport, "_tempDataBuffer", True))

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "DataChannel sendfile"

    def start(self) -> None:
        self.doWrite()

    def doWrite(self):
        transfer = self.transfer
        try:
            while not self.stopped:
                if self.pending:
                    n = self.sock.send(self.pending)
                    self.pending = self.pending[n:]
                    continue
                if self.block_left:
                    offset, count = self.ranges[0]
                    n = os.sendfile(self.sock.fileno(), self.file_fd, offset, self.block_left)
                    if n == 0:
                        raise OSError("file ended %d bytes early" % (self.block_left,))
                    self.block_left -= n
                    self.ranges[0] = (offset + n, count - n)
                    transfer.position = offset + n
                    transfer.bytes_out += n
                    if not self.block_left and count - n <= 0:
                        self.ranges.pop(0)
                    continue
                if not self.ranges:
                    self._finish()
                    return None
                offset, count = self.ranges[0]
                n = min(count, max(0, transfer.size - offset), transfer.block_size)
                if n <= 0:
                    self.ranges.pop(0)
                    continue
                self.block_left = n
                self.pending = mc.block_header(n)
        except BlockingIOError:
            self._wait()
            return None
        except OSError as e:
            log.warn("data connection of session {sid} failed while sending: {error}",
                     sid=transfer.sid, error=e)
            self.stop()
            self.transport.abortConnection()
        return None

    def _wait(self) -> None:
        if not self.registered:
            self.registered = True
            self.reactor.addWriter(self)

    def _finish(self) -> None:
        self.pending = mc.DATA_END + mc.fin(self.cmd)
        try:
            n = self.sock.send(self.pending)
        except BlockingIOError:
            n = 0
        except OSError:
            self.stop()
            self.transport.abortConnection()
            return
        rest = self.pending[n:]
        self.stop()
        if rest:
            self.transport.write(rest)
        self._done()

    def stop(self) -> None:
        """Leave the reactor; after this the stream never touches the socket."""
        self.stopped = True
        if self.registered:
            self.registered = False
            self.reactor.removeWriter(self)

    def abandon(self) -> None:
        """The connection is gone and the reactor forgot its descriptor with it."""
        self.stopped = True
        self.registered = False

    def connectionLost(self, reason) -> None:
        """The reactor dropped the descriptor (it failed while we waited for room)."""
        self.stopped = True
        self.registered = False
        self.transport.abortConnection()
