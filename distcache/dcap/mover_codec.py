"""Sans-IO DCAP data channel: request blocks in, events out; replies as bytes.

Every block on the data channel starts with a big-endian int32 counting
the bytes after it.  The parser is pull based (`next_event`) so the mover
can act on a WRITE (accept it or not) before the following bytes are read
as a DATA stream.  Once it has raised ProtocolError the parser stays
failed and refuses any further input, so its callers keep no flag of
their own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

WRITE, READ, SEEK, CLOSE, INTERRUPT, ACK, FIN, DATA = 1, 2, 3, 4, 5, 6, 7, 8
LOCATE, STATUS, SEEK_AND_READ, SEEK_AND_WRITE, READV = 9, 10, 11, 12, 13
SEEK_SET, SEEK_CUR, SEEK_END = 0, 1, 2

#: Larger request blocks are refused outright.
MAX_BLOCK = 8 * 1024 * 1024
#: A challenge is a short ASCII token; anything longer is garbage.
MAX_CHALLENGE = 1024

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class ProtocolError(Exception):
    """The data-channel peer sent something that is not DCAP."""


# ------------------------------------------------------------------ events

@dataclass(frozen=True)
class Hello:
    """Server-passive greeting: session id and challenge."""
    sid: int
    challenge: bytes


@dataclass(frozen=True)
class Read:
    count: int


@dataclass(frozen=True)
class Seek:
    offset: int
    whence: int


@dataclass(frozen=True)
class SeekAndRead:
    offset: int
    whence: int
    count: int


@dataclass(frozen=True)
class Write:
    pass


@dataclass(frozen=True)
class SeekAndWrite:
    offset: int
    whence: int


@dataclass(frozen=True)
class ReadV:
    ranges: Tuple[Tuple[int, int], ...]


@dataclass(frozen=True)
class Locate:
    pass


@dataclass(frozen=True)
class Close:
    """CLOSE; `adler32` is set when the client sent the checksum sub-block."""
    adler32: Optional[int] = None


@dataclass(frozen=True)
class Unsupported:
    """A well-framed request whose code this mover does not serve."""
    code: int


@dataclass(frozen=True)
class DataChunk:
    """Some bytes of a DATA block, handed on as they arrive.

    `data` is bytes or a memoryview of received bytes: use it before
    feeding the parser more data, or copy it.
    """
    data: Union[bytes, memoryview]


@dataclass(frozen=True)
class DataEnd:
    """The -1 block that ends a DATA stream."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

Event = Union[Hello, Read, Seek, SeekAndRead, Write, SeekAndWrite, ReadV,
              Locate, Close, Unsupported, DataChunk, DataEnd]

_HELLO, _COMMAND, _DATA_HEADER, _BLOCK_LENGTH, _BLOCK_BODY, _ERROR = range(6)


class RequestParser:
    """Parse what a DCAP client sends on a data connection.

    `expect_hello` is true for server-passive connections, where the client
    first identifies itself.  After the mover accepts a WRITE it calls
    `begin_data()`: the next bytes are a DATA header, blocks and -1.
    """

    def __init__(self, expect_hello: bool) -> None:
        self._buf = bytearray()
        self._state = _HELLO if expect_hello else _COMMAND
        self._remaining = 0
        # Bytes received in the middle of a DATA block are handed on as
        # views of what arrived, without copying them through _buf.
        self._direct: Optional[memoryview] = None

    @property
    def failed(self) -> bool:
        """True once the parser has raised: it takes no more input."""
        return self._state == _ERROR

    def receive_data(self, data: bytes) -> None:
        if self._state == _ERROR:
            raise ProtocolError("data after a protocol error")
        if self._direct is not None:
            self._buf += self._direct
            self._direct = None
        if self._state == _BLOCK_BODY and not self._buf:
            self._direct = memoryview(data)
        else:
            self._buf += data

    def begin_data(self) -> None:
        if self._state != _COMMAND:
            raise RuntimeError("begin_data outside command state")
        self._state = _DATA_HEADER

    @property
    def in_data(self) -> bool:
        return self._state in (_DATA_HEADER, _BLOCK_LENGTH, _BLOCK_BODY)

    def buffered(self) -> int:
        return len(self._buf) + (len(self._direct) if self._direct is not None else 0)

    def next_event(self):
        """The next complete event, or `NEED_DATA`."""
        if self._state == _ERROR:
            raise ProtocolError("parser failed earlier")
        try:
            while True:
                event = self._step()
                if event is not _AGAIN:
                    return event
        except ProtocolError:
            self._state = _ERROR
            self._buf.clear()
            self._direct = None
            raise

    def _step(self):
        state = self._state
        buf = self._buf
        if state == _BLOCK_BODY:
            direct = self._direct
            if direct is not None:
                take = min(self._remaining, len(direct))
                self._direct = None
                if take < len(direct):  # the block ends inside: parse the rest normally
                    buf += direct[take:]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _BLOCK_LENGTH
                return DataChunk(direct[:take])
            if not buf:
                return NEED_DATA
            take = min(self._remaining, len(buf))
            chunk = bytes(buf[:take])
            del buf[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._state = _BLOCK_LENGTH
            return DataChunk(chunk)
        if state == _BLOCK_LENGTH:
            if len(buf) < 4:
                return NEED_DATA
            (n,) = _I32.unpack_from(buf)
            del buf[:4]
            if n == -1:
                self._state = _COMMAND
                return DataEnd()
            if n < 0 or n > MAX_BLOCK:
                raise ProtocolError("bad data block length %d" % (n,))
            if n > 0:
                self._remaining = n
                self._state = _BLOCK_BODY
            return _AGAIN
        if state == _HELLO:
            if len(buf) < 8:
                return NEED_DATA
            sid, length = struct.unpack_from(">ii", buf)
            if length < 0 or length > MAX_CHALLENGE:
                raise ProtocolError("bad challenge length %d" % (length,))
            if len(buf) < 8 + length:
                return NEED_DATA
            challenge = bytes(buf[8:8 + length])
            del buf[:8 + length]
            self._state = _COMMAND
            return Hello(sid, challenge)
        # a framed block: command or DATA header
        if len(buf) < 4:
            return NEED_DATA
        (size,) = _I32.unpack_from(buf)
        if size < 4 or size > MAX_BLOCK:
            raise ProtocolError("bad request block length %d" % (size,))
        if len(buf) < 4 + size:
            return NEED_DATA
        body = bytes(buf[4:4 + size])
        del buf[:4 + size]
        (code,) = _I32.unpack_from(body)
        if state == _DATA_HEADER:
            if code != DATA:
                raise ProtocolError("expected DATA header, got code %d" % (code,))
            self._state = _BLOCK_LENGTH
            return _AGAIN
        return _decode_command(code, body[4:])


_AGAIN = object()


def _need(args: bytes, n: int, what: str) -> None:
    if len(args) < n:
        raise ProtocolError("%s request too short" % (what,))


def _decode_command(code: int, args: bytes):
    if code == READ:
        _need(args, 8, "READ")
        (count,) = _I64.unpack_from(args)
        return Read(count)
    if code == SEEK:
        _need(args, 12, "SEEK")
        offset, whence = struct.unpack_from(">qi", args)
        return Seek(offset, whence)
    if code == SEEK_AND_READ:
        _need(args, 20, "SEEK_AND_READ")
        offset, whence, count = struct.unpack_from(">qiq", args)
        return SeekAndRead(offset, whence, count)
    if code == WRITE:
        return Write()
    if code == SEEK_AND_WRITE:
        _need(args, 12, "SEEK_AND_WRITE")
        offset, whence = struct.unpack_from(">qi", args)
        return SeekAndWrite(offset, whence)
    if code == READV:
        _need(args, 4, "READV")
        (k,) = _I32.unpack_from(args)
        if k < 0 or len(args) < 4 + 12 * k:
            raise ProtocolError("READV with a bad range count %d" % (k,))
        ranges = tuple(struct.unpack_from(">qi", args, 4 + 12 * i) for i in range(k))
        return ReadV(ranges)
    if code == LOCATE:
        return Locate()
    if code == CLOSE:
        return _decode_close(args)
    return Unsupported(code)


def _decode_close(args: bytes) -> Close:
    """CLOSE may carry sub-blocks; type 1 holds (checksum type, value)."""
    pos = 0
    adler: Optional[int] = None
    while len(args) - pos >= 8:
        length, kind = struct.unpack_from(">ii", args, pos)
        if length < 4 or pos + 4 + length > len(args):
            raise ProtocolError("bad CLOSE sub-block length %d" % (length,))
        if kind == 1 and length >= 12:
            ctype, value = struct.unpack_from(">iI", args, pos + 8)
            if ctype == 1:
                adler = value
        pos += 4 + length
    return Close(adler)


# ----------------------------------------------------------------- replies

def _block(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return _I32.pack(len(body)) + body


def ack(cmd: int) -> bytes:
    return _block(struct.pack(">iii", ACK, cmd, 0))


def ack_error(cmd: int, rc: int, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:4000]
    return _block(struct.pack(">iiiH", ACK, cmd, rc, len(text)), text)


def seek_ack(position: int) -> bytes:
    return _block(struct.pack(">iiiq", ACK, SEEK, 0, position))


def locate_ack(size: int, position: int) -> bytes:
    return _block(struct.pack(">iiiqq", ACK, LOCATE, 0, size, position))


def fin(cmd: int) -> bytes:
    return _block(struct.pack(">iii", FIN, cmd, 0))


def fin_error(cmd: int, rc: int, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:4000]
    return _block(struct.pack(">iiiH", FIN, cmd, rc, len(text)), text)


DATA_HEADER = _block(struct.pack(">i", DATA))
DATA_END = _I32.pack(-1)


def block_header(length: int) -> bytes:
    return _I32.pack(length)


def client_hello(sid: int) -> bytes:
    """What a client-passive mover sends first: session id and no challenge."""
    return struct.pack(">ii", sid, 0)


# ------------------------------------------------ client-side encoders
# Used by tests and tools that play the client's part.

def encode_hello(sid: int, challenge: bytes) -> bytes:
    return struct.pack(">ii", sid, len(challenge)) + challenge


def encode_read(count: int) -> bytes:
    return _block(struct.pack(">iq", READ, count))


def encode_seek(offset: int, whence: int) -> bytes:
    return _block(struct.pack(">iqi", SEEK, offset, whence))


def encode_seek_and_read(offset: int, whence: int, count: int) -> bytes:
    return _block(struct.pack(">iqiq", SEEK_AND_READ, offset, whence, count))


def encode_write() -> bytes:
    return _block(struct.pack(">i", WRITE))


def encode_seek_and_write(offset: int, whence: int) -> bytes:
    return _block(struct.pack(">iqi", SEEK_AND_WRITE, offset, whence))


def encode_readv(ranges: List[Tuple[int, int]]) -> bytes:
    parts = [struct.pack(">ii", READV, len(ranges))]
    parts += [struct.pack(">qi", o, n) for o, n in ranges]
    return _block(*parts)


def encode_locate() -> bytes:
    return _block(struct.pack(">i", LOCATE))


def encode_close(adler32: Optional[int] = None) -> bytes:
    if adler32 is None:
        return _block(struct.pack(">i", CLOSE))
    return _block(struct.pack(">iiiiI", CLOSE, 12, 1, 1, adler32))


def encode_data(payload: bytes, block: int = 1 << 20) -> bytes:
    parts = [DATA_HEADER]
    for i in range(0, len(payload), block):
        piece = payload[i:i + block]
        parts.append(_I32.pack(len(piece)) + piece)
    parts.append(DATA_END)
    return b"".join(parts)
