"""dc_snoop: a transparent proxy that reports every distcache message crossing it.

Bytes are forwarded first and untouched in both directions; a copy of each direction is
decoded on the side to produce one readable line per complete message.  If a direction
stops making sense the analysis of that direction says why and stops, while forwarding
carries on.  Each pair of connections ends with a report of what crossed it.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from distcache import wire
from distcache.address import address_text

TO_SERVER = "C>S"
TO_CLIENT = "S>C"
_SHOWN_ID_BYTES = 64


def session_id_text(session_id: bytes) -> str:
    """A session id as quoted text when printable, else as hex (long ids are cut)."""
    shown = session_id[:_SHOWN_ID_BYTES]
    more = "..." if len(session_id) > _SHOWN_ID_BYTES else ""
    if shown and all(0x20 <= b < 0x7F for b in shown) and b'"' not in shown:
        return f'"{shown.decode("ascii")}"{more}'
    return f"0x{shown.hex()}{more}" if shown else '""'


def _size(n: int) -> str:
    return "1 byte" if n == 1 else f"{n} bytes"


def _result(byte: int) -> str:
    return wire.RESULT_NAMES.get(byte, f"0x{byte:02x}")


def describe_request(m: wire.Message) -> str:
    """What a request asks for: its session id, and for ADD the timeout and data size."""
    head = f"uid={m.uid} {wire.OP_NAMES[m.op]} request {_size(len(m.payload))}"
    if m.op != wire.OP_ADD:
        return f"{head} id={session_id_text(m.payload)}"
    try:
        add = wire.parse_add(m.payload)
    except wire.ProtocolError as e:
        return f"{head} malformed ({e}): a server closes the connection"
    if isinstance(add, int):
        timeout_ms, id_len = wire.ADD_PREFIX.unpack_from(m.payload)
        return (f"{head} timeout={timeout_ms}ms id_len={id_len}: invalid, a server answers "
                f"{_result(add)}")
    return (f"{head} id={session_id_text(add.session_id)} data={_size(len(add.data))} "
            f"timeout={add.timeout_ms}ms")


def describe_response(m: wire.Message) -> str:
    """What a reply says: its result byte by name, or how much session data came back."""
    head = f"uid={m.uid} {wire.OP_NAMES[m.op]} response {_size(len(m.payload))}"
    n = len(m.payload)
    if n == 0:
        return f"{head} empty (a dc_client answering while its server is unreachable)"
    if m.op == wire.OP_GET and n > 1:
        return f"{head} session data"
    if n == 1:
        text = f"{head} result={_result(m.payload[0])}"
        if m.op == wire.OP_GET and m.payload[0] == wire.NOTOK:
            text += " (miss)"
        return text
    return f"{head} unexpected {n}-byte payload"


class StreamAnalyser:
    """Decodes one direction of a pair and describes each complete message."""

    def __init__(self, direction: str):
        self.direction = direction
        self.bytes = 0
        self.messages = 0
        self.failed: Optional[str] = None
        self.broken = False  # the analysis itself failed: only count from then on
        self._decoder = wire.Decoder(expect=direction == TO_CLIENT)
        self._describe = describe_response if direction == TO_CLIENT else describe_request

    def feed(self, data: bytes) -> List[str]:
        """Count ``data`` and return one line per message it completes."""
        self.bytes += len(data)
        messages, error = self._decoder.receive(data)  # nothing more after a fault
        lines = [f"{self.direction} {self._describe(m)}" for m in messages]
        self.messages += len(messages)
        if error is not None:
            self.failed = str(error)
            lines.append(f"{self.direction} malformed after {self.messages} messages: {error}; "
                         "the rest is forwarded without decoding")
        return lines

    def summary(self) -> str:
        text = f"{self.direction} {_size(self.bytes)} in {self.messages} messages"
        if self.failed is None and self._decoder.buffered:
            text += f" and {_size(self._decoder.buffered)} of an unfinished message"
        elif self.failed is not None:
            text += " (undecoded after the fault)"
        return text


class Pair:
    """One client connection and its server connection, with their analysis."""

    def __init__(self, number: int, report: Callable[[str], None], clock):
        self.number = number
        self._report = report
        self._clock = clock
        self.started = clock.seconds()
        self.to_server = StreamAnalyser(TO_SERVER)
        self.to_client = StreamAnalyser(TO_CLIENT)
        self.client: Optional[SnoopClientSide] = None
        self.server: Optional[SnoopServerSide] = None
        self.finished = False

    def say(self, text: str) -> None:
        self._report(f"pair {self.number} {text}")

    def analyse(self, analyser: StreamAnalyser, data: bytes) -> None:
        if analyser.broken:
            analyser.bytes += len(data)
            return
        counted = analyser.bytes
        try:
            lines = analyser.feed(data)
        except Exception as e:  # analysis must never stop the forwarding
            analyser.bytes = counted + len(data)
            analyser.broken = True
            analyser.failed = f"analyser error {e!r}"
            lines = [f"{analyser.direction} analysis stopped: {e!r}"]
        for line in lines:
            self.say(line)

    def finish(self, how: str) -> None:
        """Report once, when the first side closes; the other side is then closed too."""
        if self.finished:
            return
        self.finished = True
        elapsed = self._clock.seconds() - self.started
        self.say(f"{how} after {elapsed:.3f}s: {self.to_server.summary()}; "
                 f"{self.to_client.summary()}")


class SnoopServerSide(Protocol):
    """The connection to the real server: its bytes go back to the client as they come."""

    def __init__(self, pair: Pair):
        self.pair = pair

    def connectionMade(self) -> None:
        if self.pair.finished:  # the client left and the endpoint connected regardless
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pair = self.pair
        pair.client.transport.write(data)
        pair.analyse(pair.to_client, data)

    def connectionLost(self, reason) -> None:
        pair = self.pair
        pair.finish("closed by the server")
        client = pair.client
        if client is not None:
            client.transport.loseConnection()


class _ServerSideFactory(Factory):
    noisy = False

    def __init__(self, pair: Pair):
        self.pair = pair

    def buildProtocol(self, addr) -> SnoopServerSide:
        return SnoopServerSide(self.pair)


class SnoopClientSide(Protocol):
    """An accepted client: connects to the server, then relays in both directions."""

    def __init__(self):
        self.pair: Optional[Pair] = None
        self._early: List[bytes] = []
        self._connecting: Optional[Deferred] = None

    def connectionMade(self) -> None:
        factory = self.factory
        factory.pairs += 1
        self.pair = pair = Pair(factory.pairs, factory.report, factory.clock)
        pair.client = self
        self.transport.pauseProducing()  # until the server is there to take the bytes
        self._connecting = factory.server_endpoint.connect(_ServerSideFactory(pair))
        self._connecting.addCallbacks(self._server_connected, self._server_failed)

    def _server_connected(self, server: SnoopServerSide) -> None:
        self._connecting = None
        pair = self.pair
        pair.server = server
        pair.say(f"open: client {address_text(self.transport.getPeer())} <-> server "
                 f"{address_text(server.transport.getPeer())}")
        # Each side stops reading while the other cannot take more.
        server.transport.registerProducer(self.transport, True)
        self.transport.registerProducer(server.transport, True)
        early, self._early = self._early, []
        if early:
            server.transport.write(b"".join(early))
        self.transport.resumeProducing()

    def _server_failed(self, failure) -> None:
        self._connecting = None
        pair = self.pair
        if pair.finished:  # cancelled because the client left: nothing to report
            return
        pair.say(f"cannot reach the server: {failure.getErrorMessage()}")
        pair.finish("closed for want of a server")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pair = self.pair
        if pair.server is None:
            self._early.append(data)
        else:
            pair.server.transport.write(data)
        pair.analyse(pair.to_server, data)

    def connectionLost(self, reason) -> None:
        pair = self.pair
        pair.finish("closed by the client")
        if self._connecting is not None:
            self._connecting.cancel()
        elif pair.server is not None:
            pair.server.transport.loseConnection()


class SnoopFactory(Factory):
    """Accepts clients for one server; numbers the pairs and carries the report sink."""

    protocol = SnoopClientSide
    noisy = False
    log = Logger()

    def __init__(self, server_endpoint, clock=None, report: Optional[Callable[[str], None]] = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.server_endpoint = server_endpoint
        self.clock = clock
        self.report = report or self._log
        self.pairs = 0

    def _log(self, line: str) -> None:
        self.log.info("{line}", line=line)
