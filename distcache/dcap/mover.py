"""The mover: one data connection per open, in either connection mode.

Server-passive: the door answers `connect host port challenge`, the mover
listens (`listen_for_mover`) and serves the first connection that presents
the session id and challenge.  Client-passive: the mover connects to the
client's callback address (`connect_to_client`) and sends session id + 0.
Either way `DataChannel` then serves the IOCMDs from `mover_codec`.

Bytes never pile up: a read of a stored file goes from the file to the
socket with os.sendfile, waiting for room through the reactor; other reads
stream through a push producer in large blocks that the socket's
back-pressure pauses.  While a reply is streaming the mover stops reading
requests, and written blocks go to the upload file as they arrive.
"""

from __future__ import annotations

import hmac
import io
import os
import secrets
import zlib
from typing import Callable, Optional

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, TCP6ClientEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from distcache.dcap import mover_codec as mc
from distcache.dcap.checksum import ADLER32_START, BLOCK_SIZE
from distcache.dcap.errors import RC_DISK_IO, RC_INVALID_ARGS, TransferError

log = Logger()

#: Bytes asked of a data socket per read (Twisted's default is 64 KiB):
#: fewer trips through the reactor for a write's DATA blocks.
RECEIVE_SIZE = 256 * 1024


def new_challenge() -> str:
    """An unguessable, single-use token for one server-passive connection."""
    return secrets.token_urlsafe(36)


class Transfer:
    """What one open moves: the file access and how the outcome is reported.

    `source` is a readable binary file (reads) or None; `upload` is the
    pool's Upload (writes) or None.  `finished` fires once, with None on
    success or a TransferError, when the data channel is done.
    """

    def __init__(self, sid: int, source=None, size: int = 0, upload=None, label: str = ""):
        self.sid = sid
        self.source = source
        self.upload = upload
        self.size = size
        self.label = label
        self.position = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.finished: defer.Deferred = defer.Deferred()
        self.channel: Optional["DataChannel"] = None
        # Set by the door from its policy: the socket buffer sizes and I/O
        # block of this transfer, and the open's deadline watch.
        self.policy = None
        self.buffers = None
        self.block_size = BLOCK_SIZE
        self.watch = None
        # running adler32, valid while the file is written front to back
        self._adler: Optional[int] = ADLER32_START if size == 0 else None
        self._fpos = -1
        self._done = False

    @property
    def ended(self) -> bool:
        """True once the outcome is decided (finished fired)."""
        return self._done

    # -- file access ---------------------------------------------------

    @property
    def writable(self) -> bool:
        return self.upload is not None

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

    # -- outcome -------------------------------------------------------

    def commit(self, client_adler32: Optional[int]):
        """Make a written file visible; a checksum mismatch discards it.

        None when done at once, or a Deferred when the pool's workers sync
        and checksum off the reactor; failures are TransferErrors.
        """
        if self.upload is None:
            return None
        try:
            result = self.upload.commit(size=self.size, adler32=self._adler,
                                        client_adler32=client_adler32)
        except Exception as e:
            raise _as_transfer_error(e)
        if isinstance(result, defer.Deferred):
            return result.addErrback(lambda f: _raise(_as_transfer_error(f.value)))
        return None

    def abort(self) -> None:
        """Discard a partial write (the earlier version, if any, stays)."""
        if self.upload is not None:
            self.upload.abort()
        if self.source is not None:
            self.source.close()
            self.source = None

    def finish(self, error: Optional[TransferError]) -> None:
        if self._done:
            return
        self._done = True
        if error is not None:
            self.abort()
        elif self.source is not None:
            self.source.close()
            self.source = None
        self.finished.callback(error)

    def kill(self, reason: str) -> None:
        """End the transfer from the door's side (client gone, timeout)."""
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.abortConnection()
        self.finish(TransferError(RC_DISK_IO, reason, "EIO"))


def _as_transfer_error(e: BaseException) -> TransferError:
    if isinstance(e, TransferError):
        return e
    return TransferError(getattr(e, "rc", RC_DISK_IO), getattr(e, "message", str(e)),
                         getattr(e, "posix", "EIO"))


def _raise(e: BaseException):
    raise e


@implementer(IPushProducer)
class _ReadStream:
    """Send `count` bytes from `offset` (or a list of ranges) as DATA blocks."""

    def __init__(self, channel: "DataChannel", ranges, cmd: int):
        self.channel = channel
        self.ranges = list(ranges)
        self.cmd = cmd
        self.paused = False
        self.stopped = False

    def start(self) -> None:
        t = self.channel.transport
        t.write(mc.ack(self.cmd) + mc.DATA_HEADER)
        t.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True

    def resumeProducing(self) -> None:
        self.paused = False
        channel = self.channel
        transfer = channel.transfer
        transport = channel.transport
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
        t = self.channel.transport
        t.unregisterProducer()
        if error is None:
            t.write(mc.DATA_END + mc.fin(self.cmd))
        else:
            t.write(mc.DATA_END + mc.fin_error(self.cmd, error.rc, error.message))
        self.channel.streamDone()


class _SendfileStream:
    """Send file ranges as DATA blocks with os.sendfile: no copy through Python.

    Used for reads of stored files when the transport's own buffer is empty.
    While it runs the stream is the socket's only writer (the channel has
    paused reading and writes nothing else), registered with the reactor
    under the socket's descriptor; small framing bytes go out with plain
    sends.  A socket error aborts the connection like any transport error.
    """

    def __init__(self, channel: "DataChannel", ranges, cmd: int):
        self.channel = channel
        self.transport = channel.transport
        self.reactor = channel.transport.reactor
        self.sock = channel.transport.socket
        self.file_fd = channel.transfer.source.fileno()
        self.ranges = list(ranges)
        self.cmd = cmd
        self.pending = mc.ack(cmd) + mc.DATA_HEADER
        self.block_left = 0  # bytes of the current block still to send
        self.stopped = False
        self.registered = False

    @staticmethod
    def usable(channel: "DataChannel") -> bool:
        """True when the read can bypass the transport's buffer."""
        t = channel.transport
        source = channel.transfer.source
        if not hasattr(os, "sendfile") or channel.transfer.upload is not None:
            return False
        if getattr(t, "socket", None) is None or getattr(t, "reactor", None) is None:
            return False
        if not hasattr(source, "fileno") or isinstance(source, io.BytesIO):
            return False
        # Everything written earlier must be out, or bytes would be reordered.
        return not t.dataBuffer[t.offset:] and not getattr(t, "_tempDataBuffer", True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "DataChannel sendfile"

    def start(self) -> None:
        self.channel.stream = self
        self.doWrite()

    def doWrite(self):
        transfer = self.channel.transfer
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
        self.channel.stream = None
        self.channel.streamDone()

    def stop(self) -> None:
        """Leave the reactor; after this the stream never touches the socket."""
        self.stopped = True
        if self.registered:
            self.registered = False
            self.reactor.removeWriter(self)

    def connectionLost(self, reason) -> None:
        self.stopped = True
        self.registered = False
        self.transport.abortConnection()


class DataChannel(Protocol):
    """Serve one client's IOCMDs for one transfer.

    `verify(sid, challenge)` (server-passive) returns the Transfer the
    client may use, or None; client-passive channels get their transfer up
    front and greet the client with the session id.
    """

    def __init__(self, transfer: Optional[Transfer] = None,
                 verify: Optional[Callable[[int, bytes], Optional[Transfer]]] = None,
                 prepare: Optional[Callable] = None):
        self.transfer = transfer
        self._verify = verify
        self._prepare = prepare or prepare_data_connection
        self.parser = mc.RequestParser(expect_hello=transfer is None)
        self._busy = False
        self._write_error: Optional[TransferError] = None
        self._write_cmd = mc.WRITE
        self._closed = False
        self._committing = False  # a CLOSE's commit is running off the reactor
        self.stream: Optional[_SendfileStream] = None

    def connectionMade(self) -> None:
        if self.transfer is not None:
            if self.transfer.ended:  # ended while the connection was being made
                self.transport.abortConnection()
                return
            self._attach(self.transfer)
            self.transport.write(mc.client_hello(self.transfer.sid))

    def _attach(self, transfer: Transfer) -> None:
        self.transfer = transfer
        transfer.channel = self
        self._prepare(self.transport, transfer)

    def dataReceived(self, data: bytes) -> None:
        self.parser.receive_data(data)
        if not self._busy:
            self._process()

    def streamDone(self) -> None:
        self._busy = False
        if self.transport is not None:
            self.transport.resumeProducing()
        self._process()

    def _process(self) -> None:
        while not self._busy and not self._closed:
            try:
                event = self.parser.next_event()
            except mc.ProtocolError as e:
                self._violation(str(e))
                return
            if event is mc.NEED_DATA:
                return
            self._handle(event)

    def _violation(self, reason: str) -> None:
        peer = self.transport.getPeer()
        log.warn("data channel protocol error from {peer}: {reason}", peer=peer, reason=reason)
        self._closed = True
        if self.transfer is not None:
            self.transfer.finish(TransferError(RC_DISK_IO, "data channel protocol error: " + reason, "EIO"))
        self.transport.abortConnection()

    def _handle(self, event) -> None:
        transfer = self.transfer
        if isinstance(event, mc.Hello):
            transfer = self._verify(event.sid, event.challenge) if self._verify else None
            if transfer is None:
                log.warn("data connection from {peer} refused: wrong session id {sid} or challenge",
                         peer=self.transport.getPeer(), sid=event.sid)
                self._closed = True
                self.transport.loseConnection()
                return
            self._attach(transfer)
            log.info("data connection for session {sid} ({label}) from {peer}",
                     sid=event.sid, label=transfer.label, peer=self.transport.getPeer())
            return
        t = self.transport
        if isinstance(event, mc.DataChunk):
            if self._write_error is None:
                try:
                    transfer.write_at(transfer.position, event.data)
                    transfer.position += len(event.data)
                    transfer.bytes_in += len(event.data)
                except OSError as e:
                    self._write_error = TransferError(RC_DISK_IO, "write failed: %s" % (e.strerror or e,), "EIO")
            return
        if isinstance(event, mc.DataEnd):
            if self._write_error is None:
                t.write(mc.fin(self._write_cmd))
            else:
                t.write(mc.fin_error(self._write_cmd, self._write_error.rc, self._write_error.message))
            return
        if isinstance(event, mc.Read):
            self._read(mc.READ, transfer.position, event.count)
        elif isinstance(event, mc.SeekAndRead):
            pos = self._seek(event.offset, event.whence, mc.SEEK_AND_READ)
            if pos is not None:
                self._read(mc.SEEK_AND_READ, pos, event.count)
        elif isinstance(event, mc.Seek):
            pos = self._seek(event.offset, event.whence, mc.SEEK)
            if pos is not None:
                t.write(mc.seek_ack(pos))
        elif isinstance(event, mc.ReadV):
            ranges = [(o, n) for o, n in event.ranges]
            if any(o < 0 or n < 0 for o, n in ranges):
                t.write(mc.ack_error(mc.READV, RC_INVALID_ARGS, "negative offset or length"))
                return
            self._stream(mc.READV, ranges)
        elif isinstance(event, (mc.Write, mc.SeekAndWrite)):
            cmd = mc.WRITE if isinstance(event, mc.Write) else mc.SEEK_AND_WRITE
            if not transfer.writable:
                t.write(mc.ack_error(cmd, RC_INVALID_ARGS, "file is open for reading only"))
                return
            if cmd == mc.SEEK_AND_WRITE:
                pos = self._seek(event.offset, event.whence, cmd)
                if pos is None:
                    return
            self._write_cmd = cmd
            self.parser.begin_data()
            t.write(mc.ack(cmd))
        elif isinstance(event, mc.Locate):
            t.write(mc.locate_ack(transfer.size, transfer.position))
        elif isinstance(event, mc.Close):
            self._close(event.adler32)
        else:
            t.write(mc.ack_error(event.code, RC_INVALID_ARGS, "request %d not supported" % (event.code,)))

    def _seek(self, offset: int, whence: int, cmd: int) -> Optional[int]:
        transfer = self.transfer
        base = {mc.SEEK_SET: 0, mc.SEEK_CUR: transfer.position, mc.SEEK_END: transfer.size}.get(whence)
        if base is None or base + offset < 0:
            self.transport.write(mc.ack_error(cmd, RC_INVALID_ARGS, "invalid seek"))
            return None
        transfer.position = base + offset
        return transfer.position

    def _read(self, cmd: int, offset: int, count: int) -> None:
        if count < 0:
            self.transport.write(mc.ack_error(cmd, RC_INVALID_ARGS, "negative read size"))
            return
        count = max(0, min(count, self.transfer.size - offset))
        self._stream(cmd, [(offset, count)])

    def _stream(self, cmd: int, ranges) -> None:
        """Answer a read: ACK, DATA blocks, end, FIN; requests wait meanwhile."""
        self._busy = True
        self.transport.pauseProducing()
        if _SendfileStream.usable(self):
            _SendfileStream(self, ranges, cmd).start()
        else:
            _ReadStream(self, ranges, cmd).start()

    def _close(self, adler32: Optional[int]) -> None:
        transfer = self.transfer
        self._closed = True
        try:
            if self._write_error is not None:
                # a block was not stored: the file has a hole and must not become visible
                if transfer.upload is not None:
                    transfer.upload.abort()
                raise self._write_error
            result = transfer.commit(adler32)
        except TransferError as e:
            self._close_failed(e)
            return
        if isinstance(result, defer.Deferred):
            self._committing = True
            result.addCallbacks(lambda _: self._closed_ok(),
                                lambda f: self._close_failed(f.value))
            return
        self._closed_ok()

    def _close_failed(self, e: TransferError) -> None:
        self._committing = False
        transfer = self.transfer
        log.warn("transfer {sid} ({label}) failed at close: {message}",
                 sid=transfer.sid, label=transfer.label, message=e.message)
        self.transport.write(mc.ack_error(mc.CLOSE, e.rc, e.message))
        self.transport.loseConnection()
        transfer.finish(e)

    def _closed_ok(self) -> None:
        self._committing = False
        transfer = self.transfer
        self.transport.write(mc.ack(mc.CLOSE))
        self.transport.loseConnection()
        log.info("transfer {sid} ({label}) closed: {bytes_in} bytes in, {bytes_out} bytes out",
                 sid=transfer.sid, label=transfer.label,
                 bytes_in=transfer.bytes_in, bytes_out=transfer.bytes_out)
        transfer.finish(None)

    def connectionLost(self, reason) -> None:
        if self.stream is not None:
            self.stream.stopped = True  # the reactor already forgot it with the socket
            self.stream = None
        if self.transfer is not None and not self.transfer.ended and not self._committing:
            if self.transfer.writable:
                log.warn("data connection of session {sid} ({label}) lost before CLOSE: write discarded",
                         sid=self.transfer.sid, label=self.transfer.label)
            self.transfer.finish(TransferError(RC_DISK_IO, "data connection lost before CLOSE", "EIO"))


# ---------------------------------------------------------------- hooks

def prepare_data_connection(transport, transfer: Transfer) -> None:
    """The one place a data socket is set up before any data flows.

    TCP_NODELAY keeps small ACK/FIN replies from waiting on Nagle and reads
    take RECEIVE_SIZE bytes at a time; the door's policy then sets the
    transfer's socket buffer sizes and starts the open's deadline watch on
    its data phase.
    """
    if hasattr(transport, "setTcpNoDelay"):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = RECEIVE_SIZE
    if transfer.policy is not None:
        transfer.policy.prepare(transport, transfer)


def listen_for_mover(reactor, interface: str, factory: Factory) -> defer.Deferred:
    """The one place server-passive ports come from: an ephemeral port on interface."""
    if ":" in interface:
        endpoint = TCP6ServerEndpoint(reactor, 0, interface=interface)
    else:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface=interface)
    return endpoint.listen(factory)


def connect_to_client(reactor, host: str, port: int, channel: DataChannel, timeout: float = 30) -> defer.Deferred:
    """Client-passive: connect to the client's callback address."""
    if ":" in host:
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoint.connect(_OneProtocol(channel))


class _OneProtocol(Factory):
    noisy = False
    def __init__(self, protocol: Protocol):
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


class PassiveMoverFactory(Factory):
    """Accept data connections for one transfer until one proves itself.

    The challenge is compared in constant time and used once: after a
    successful hello `accepted` is set and the listener is closed by its
    owner.
    """

    noisy = False

    def __init__(self, transfer: Transfer, challenge: str, on_accept: Callable[[], None]):
        self.transfer = transfer
        self.challenge = challenge.encode("ascii")
        self.accepted = False
        self._on_accept = on_accept

    def verify(self, sid: int, challenge: bytes) -> Optional[Transfer]:
        if self.accepted or sid != self.transfer.sid:
            return None
        if not hmac.compare_digest(challenge, self.challenge):
            return None
        self.accepted = True
        self._on_accept()
        return self.transfer

    def buildProtocol(self, addr):
        return DataChannel(verify=self.verify)
