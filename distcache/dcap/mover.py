"""The mover: one data connection per open, in either connection mode.

Server-passive: the door answers `connect host port challenge` naming the
pool's one data port (`dataport.DataPort`, listening through
`listen_for_mover`), and the channel serves the transfer whose session id
and challenge the connection presents in time.  Client-passive: the mover connects
to the client's callback address (`connect_to_client`) and sends session
id + 0.  Either way `DataChannel` then serves the IOCMDs of `mover_codec`
for one `Transfer`.

A data channel is in one of five states (`ChannelState`), and what each
request does in each state is looked up in `HANDLERS`: the table is the
specification.  While a reply is streaming the channel stops reading
requests (they wait in the socket and the parser).  Written blocks go to
the transfer as they arrive, which batches them onto the pool's disk
workers; while too many received bytes wait for the disk the channel
stops reading the connection too.  A block's FIN goes out once its
bytes are received: a write that fails on the disk later is reported by
the next FIN and the CLOSE, and the CLOSE waits until every byte is in
the file.
"""

from __future__ import annotations

import enum
import secrets
import socket
from typing import Callable, Dict, Optional, Tuple

from twisted.internet import defer, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from distcache.address import address_text
from distcache.dcap import mover_codec as mc
from distcache.dcap.errors import RC_DISK_IO, RC_INVALID_ARGS, TransferError
from distcache.dcap.sendfile import make_stream
from distcache.dcap.transfer import Transfer, ack_now

log = Logger()

#: Seconds a server-passive data connection may take to present its challenge.
HELLO_TIMEOUT = 5.0


def new_challenge() -> str:
    """An unguessable, single-use token for one server-passive connection."""
    return secrets.token_urlsafe(36)


class ChannelState(enum.Enum):
    AWAITING_HELLO = "awaiting hello"  # server-passive, before the client proved itself
    IDLE = "idle"                      # waiting for the next request
    STREAMING = "streaming"            # a read reply is going out; requests wait
    RECEIVING = "receiving data"       # a WRITE was accepted; DATA blocks come in
    COMMITTING = "committing"          # CLOSE received; the pool's workers sync and publish
    CLOSED = "closed"                  # CLOSE answered, connection refused or failed


S = ChannelState

COMMANDS = (mc.Read, mc.Seek, mc.SeekAndRead, mc.Write, mc.SeekAndWrite, mc.ReadV,
            mc.Locate, mc.Close, mc.Unsupported)
EVENTS = (mc.Hello,) + COMMANDS + (mc.DataChunk, mc.DataEnd)

#: States in which the channel takes events from its parser.  In the others
#: input stays queued (STREAMING) or is never looked at again (CLOSED).
READING_STATES = frozenset({S.AWAITING_HELLO, S.IDLE, S.RECEIVING})


class DataChannel(Protocol):
    """Serve one client's IOCMDs for one transfer.

    `verify(sid, challenge)` (server-passive) returns the Transfer the
    client may use, or None; such a channel drops a connection that has not
    sent its hello within `hello_timeout` seconds of `clock`.
    Client-passive channels get their transfer up front and greet the
    client with the session id.
    """

    def __init__(self, transfer: Optional[Transfer] = None,
                 verify: Optional[Callable[[int, bytes], Optional[Transfer]]] = None,
                 clock=None, hello_timeout: float = HELLO_TIMEOUT):
        self.transfer = transfer
        self._verify = verify
        self._clock = clock
        self._hello_timeout = hello_timeout
        self._hello_timer = None
        self.state = S.AWAITING_HELLO if transfer is None else S.IDLE
        self.parser = mc.RequestParser(expect_hello=transfer is None)
        self._stream = None            # the running reply, in STREAMING
        self._write_cmd = mc.WRITE     # the accepted WRITE, in RECEIVING
        self._processing = False
        self._close_started = None     # when CLOSE came in, while COMMITTING
        # Why the transport is paused: "stream" (a reply goes out, requests
        # wait) and/or "disk" (received bytes wait for the disk workers).
        self._paused_for: set = set()

    # -- connection events ----------------------------------------------

    def _now(self) -> float:
        if self._clock is None:
            from twisted.internet import reactor as clock
            self._clock = clock
        return self._clock.seconds()

    def connectionMade(self) -> None:
        if self.state is S.AWAITING_HELLO:
            if self._clock is None:
                from twisted.internet import reactor as clock
                self._clock = clock
            self._hello_timer = self._clock.callLater(self._hello_timeout, self._hello_overdue)
            return
        if self.transfer.ended:  # ended while the connection was being made
            self._enter_closed()
            self.transport.abortConnection()
            return
        self._attach(self.transfer)
        self.transport.write(mc.client_hello(self.transfer.sid))

    def dataReceived(self, data: bytes) -> None:
        if self.state is S.CLOSED:
            return
        ack_now(self.transport)
        start = self._now()
        self.parser.receive_data(data)
        self._process()
        if self.transfer is not None and self._close_started is None:
            self.transfer.busy += self._now() - start

    def connectionLost(self, reason) -> None:
        if self._stream is not None:
            self._stream.abandon()  # the reactor already forgot it with the socket
            self._stream = None
        if self.state is S.COMMITTING:
            return  # the commit decides the outcome; its answer goes nowhere
        self._enter_closed()
        transfer = self.transfer
        if transfer is not None and not transfer.ended:
            if transfer.writable:
                log.warn("data connection of session {sid} ({label}) lost before CLOSE: write discarded",
                         sid=transfer.sid, label=transfer.label)
            transfer.end(TransferError(RC_DISK_IO, "data connection lost before CLOSE", "EIO"))

    # -- the loop -------------------------------------------------------

    def _process(self) -> None:
        """Hand parsed events to the table while the state reads requests."""
        if self._processing:
            return  # a stream that ended at once: the running loop goes on
        self._processing = True
        try:
            while self.state in READING_STATES:
                try:
                    event = self.parser.next_event()
                except mc.ProtocolError as e:
                    self._violation(str(e))
                    return
                if event is mc.NEED_DATA:
                    return
                self.dispatch(event)
        finally:
            self._processing = False

    def dispatch(self, event) -> None:
        """Do what the table says `event` does in the current state."""
        HANDLERS[(self.state, type(event))](self, event)

    def _enter_closed(self) -> None:
        self.state = S.CLOSED
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None

    # -- outcomes of the table ------------------------------------------

    def _out_of_turn(self, event) -> None:
        self._violation("%s while %s" % (type(event).__name__, self.state.value))

    def _ignore(self, event) -> None:
        """After CLOSE or a failure nothing the peer sends matters."""

    def _violation(self, reason: str) -> None:
        log.warn("data channel protocol error from {peer}: {reason}",
                 peer=address_text(self.transport.getPeer()), reason=reason)
        self._enter_closed()
        if self.transfer is not None:
            self.transfer.end(TransferError(RC_DISK_IO, "data channel protocol error: " + reason, "EIO"))
        self.transport.abortConnection()

    def _hello_overdue(self) -> None:
        self._hello_timer = None
        log.warn("data connection from {peer} dropped: no hello within {seconds} s",
                 peer=address_text(self.transport.getPeer()), seconds=self._hello_timeout)
        self._enter_closed()
        self.transport.abortConnection()

    def _hello(self, event: mc.Hello) -> None:
        transfer = self._verify(event.sid, event.challenge) if self._verify else None
        if transfer is None:
            log.warn("data connection from {peer} refused: wrong session id {sid} or challenge",
                     peer=address_text(self.transport.getPeer()), sid=event.sid)
            self._enter_closed()
            self.transport.loseConnection()
            return
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None
        self.state = S.IDLE
        self.transfer = transfer
        self._attach(transfer)
        log.info("data connection for session {sid} ({label}) from {peer}",
                 sid=event.sid, label=transfer.label, peer=address_text(self.transport.getPeer()))

    def _data(self, event: mc.DataChunk) -> None:
        self.transfer.store(event.data)

    def _data_end(self, event: mc.DataEnd) -> None:
        self.state = S.IDLE
        error = self.transfer.write_error
        if error is None:
            self._reply(mc.fin(self._write_cmd))
        else:
            self._reply(mc.fin_error(self._write_cmd, error.rc, error.message))
        # The client waits for the FIN, not for the hand-over of the block's
        # last bytes to the disk workers.
        self.transfer.flush()

    def _read(self, event: mc.Read) -> None:
        self._read_from(mc.READ, self.transfer.position, event.count)

    def _seek_and_read(self, event: mc.SeekAndRead) -> None:
        pos = self._seek_to(event.offset, event.whence, mc.SEEK_AND_READ)
        if pos is not None:
            self._read_from(mc.SEEK_AND_READ, pos, event.count)

    def _seek(self, event: mc.Seek) -> None:
        pos = self._seek_to(event.offset, event.whence, mc.SEEK)
        if pos is not None:
            self.transport.write(mc.seek_ack(pos))

    def _readv(self, event: mc.ReadV) -> None:
        ranges = [(o, n) for o, n in event.ranges]
        if any(o < 0 or n < 0 for o, n in ranges):
            self.transport.write(mc.ack_error(mc.READV, RC_INVALID_ARGS, "negative offset or length"))
            return
        self._start_stream(mc.READV, ranges)

    def _write(self, event) -> None:
        cmd = mc.WRITE if isinstance(event, mc.Write) else mc.SEEK_AND_WRITE
        if not self.transfer.writable:
            self.transport.write(mc.ack_error(cmd, RC_INVALID_ARGS, "file is open for reading only"))
            return
        if cmd == mc.SEEK_AND_WRITE:
            if self._seek_to(event.offset, event.whence, cmd) is None:
                return
        self._write_cmd = cmd
        self.parser.begin_data()
        self.state = S.RECEIVING
        self._reply(mc.ack(cmd))

    def _locate(self, event: mc.Locate) -> None:
        self.transport.write(mc.locate_ack(self.transfer.size, self.transfer.position))

    def _unsupported(self, event: mc.Unsupported) -> None:
        self.transport.write(mc.ack_error(event.code, RC_INVALID_ARGS, "request %d not supported" % (event.code,)))

    def _close(self, event: mc.Close) -> None:
        transfer = self.transfer
        self.state = S.COMMITTING
        self._close_started = self._now()
        try:
            result = transfer.commit(event.adler32)
        except TransferError as e:
            self._close_failed(e)
            return
        if isinstance(result, defer.Deferred):
            # The CLOSE is answered once the workers have synced and published.
            result.addCallbacks(lambda _: self._closed_ok(), lambda f: self._close_failed(f.value))
            return
        self._closed_ok()

    def _closing_done(self) -> None:
        """Count the commit, from CLOSE to its answer, as the door's time."""
        if self._close_started is not None:
            self.transfer.busy += self._now() - self._close_started

    def _close_failed(self, e: TransferError) -> None:
        transfer = self.transfer
        self._closing_done()
        self._enter_closed()
        log.warn("transfer {sid} ({label}) failed at close: {message}",
                 sid=transfer.sid, label=transfer.label, message=e.message)
        self.transport.write(mc.ack_error(mc.CLOSE, e.rc, e.message))
        self.transport.loseConnection()
        transfer.end(e)

    def _closed_ok(self) -> None:
        transfer = self.transfer
        self._closing_done()
        self._enter_closed()
        self._reply(mc.ack(mc.CLOSE))
        self.transport.loseConnection()
        log.info("transfer {sid} ({label}) closed: {bytes_in} bytes in, {bytes_out} bytes out",
                 sid=transfer.sid, label=transfer.label,
                 bytes_in=transfer.bytes_in, bytes_out=transfer.bytes_out)
        transfer.end(None)

    # -- helpers --------------------------------------------------------

    def _reply(self, data: bytes) -> None:
        """Send a short reply the client waits for now, not on the next reactor turn.

        Twisted's transport.write sends on the next pass of the event loop;
        for the ACK and FIN of a write, which the client waits for before
        its next block, that is a loop pass and three system calls a block.
        With nothing queued before it the reply goes straight to the socket;
        what the socket does not take is queued as usual.
        """
        transport = self.transport
        sock = getattr(transport, "socket", None)
        if (sock is None or not isinstance(getattr(transport, "dataBuffer", None), bytes)
                or transport.dataBuffer[transport.offset:]
                or getattr(transport, "_tempDataBuffer", True)
                or getattr(transport, "disconnecting", False)):
            transport.write(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # the transport meets the same error and reports it
            return
        if sent < len(data):
            transport.write(data[sent:])

    def _seek_to(self, offset: int, whence: int, cmd: int) -> Optional[int]:
        transfer = self.transfer
        base = {mc.SEEK_SET: 0, mc.SEEK_CUR: transfer.position, mc.SEEK_END: transfer.size}.get(whence)
        if base is None or base + offset < 0:
            self.transport.write(mc.ack_error(cmd, RC_INVALID_ARGS, "invalid seek"))
            return None
        transfer.position = base + offset
        return transfer.position

    def _read_from(self, cmd: int, offset: int, count: int) -> None:
        if count < 0:
            self.transport.write(mc.ack_error(cmd, RC_INVALID_ARGS, "negative read size"))
            return
        count = max(0, min(count, self.transfer.size - offset))
        self._start_stream(cmd, [(offset, count)])

    def _start_stream(self, cmd: int, ranges) -> None:
        """Answer a read: ACK, DATA blocks, end, FIN; requests wait meanwhile.

        A read of an upload waits until what was written is in the file.
        """
        self.state = S.STREAMING
        self._pause("stream")
        settled = self.transfer.settled() if self.transfer.writable else None
        if settled is None:
            self._stream_now(cmd, ranges)
        else:
            settled.addCallback(lambda _: self._stream_now(cmd, ranges))

    def _stream_now(self, cmd: int, ranges) -> None:
        if self.state is not S.STREAMING:
            return  # the connection went while the writes settled
        self._stream = make_stream(self.transport, self.transfer, ranges, cmd, self._stream_done)
        self._stream.start()

    def _stream_done(self) -> None:
        self._stream = None
        self.state = S.IDLE
        self._resume("stream")
        self._process()

    # -- reading the connection, or not --------------------------------

    def _attach(self, transfer: Transfer) -> None:
        transfer.on_pressure = self._disk_pressure
        transfer.attach(self.transport)

    def _disk_pressure(self, stop: bool) -> None:
        """The transfer's received bytes wait for the disk (stop) or no longer do."""
        (self._pause if stop else self._resume)("disk")

    def _pause(self, reason: str) -> None:
        if not self._paused_for:
            self.transport.pauseProducing()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._paused_for:
            return
        self._paused_for.discard(reason)
        if not self._paused_for and self.state is not S.CLOSED:
            self.transport.resumeProducing()


def _table() -> Dict[Tuple[ChannelState, type], Callable]:
    """What every event does in every state."""
    table: Dict[Tuple[ChannelState, type], Callable] = {}
    for state in ChannelState:
        for event in EVENTS:
            table[(state, event)] = (DataChannel._ignore if state in (S.COMMITTING, S.CLOSED)
                                     else DataChannel._out_of_turn)
    table[(S.AWAITING_HELLO, mc.Hello)] = DataChannel._hello
    table.update({
        (S.IDLE, mc.Read): DataChannel._read,
        (S.IDLE, mc.Seek): DataChannel._seek,
        (S.IDLE, mc.SeekAndRead): DataChannel._seek_and_read,
        (S.IDLE, mc.Write): DataChannel._write,
        (S.IDLE, mc.SeekAndWrite): DataChannel._write,
        (S.IDLE, mc.ReadV): DataChannel._readv,
        (S.IDLE, mc.Locate): DataChannel._locate,
        (S.IDLE, mc.Close): DataChannel._close,
        (S.IDLE, mc.Unsupported): DataChannel._unsupported,
        (S.RECEIVING, mc.DataChunk): DataChannel._data,
        (S.RECEIVING, mc.DataEnd): DataChannel._data_end,
    })
    return table


#: (state, event type) -> handler.  STREAMING never reads (a request then
#: would be out of turn); COMMITTING and CLOSED ignore everything.
HANDLERS = _table()


# ---------------------------------------------------------------- ports

class QuietPort(tcp.Port):
    """A listening port that opens and closes without a log line.

    The data port logs its own line when it starts; Twisted's `... starting
    on N` and `(TCP Port N Closed)` would repeat it with object reprs.
    """

    def startListening(self) -> None:
        skt = self.createInternetSocket()
        try:
            if self.addressFamily == socket.AF_INET6:
                addr = socket.getaddrinfo(self.interface, self.port, socket.AF_INET6,
                                          socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
            else:
                addr = (self.interface, self.port)
            skt.bind(addr)
            skt.listen(self.backlog)
        except OSError as e:
            skt.close()
            raise CannotListenError(self.interface, self.port, e)
        self._realPortNumber = skt.getsockname()[1]
        self.factory.doStart()
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno
        self.numberAccepts = 100
        self.startReading()

    def _logConnectionLostMsg(self) -> None:
        pass


def listen_for_mover(reactor, interface: str, factory: Factory, port: int = 0):
    """The one place server-passive ports come from: port (0: any) on interface."""
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenTCP(port, factory, interface=interface)
    listener = QuietPort(port, factory, interface=interface, reactor=reactor)
    listener.startListening()
    return listener


def connect_to_client(reactor, host: str, port: int, channel: DataChannel, timeout: float = 30):
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
