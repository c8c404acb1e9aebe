"""The distcache wire format, sans I/O: bytes in, messages out; messages in, bytes out.

Protocol level 0x0011, as spoken by the C distcache 1.4.5 and the 1.5 line.  A message
is cut into frames of at most 2048 payload bytes, each behind a 14-byte big-endian
header; a message carries at most 16 frames (32768 bytes).  Every malformed input
raises :class:`ProtocolError`; the protocol has no error reply, so the caller closes
the connection.
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Tuple

PROTO_LEVEL = 0x00110000
PROTO_VERSION = 0x0011

HEADER = struct.Struct(">IBIBBBH")
HEADER_SIZE = HEADER.size  # 14
FRAME_MAX = 2048
FRAMES_MAX = 16
MESSAGE_MAX = FRAME_MAX * FRAMES_MAX  # 32768

OP_ADD, OP_GET, OP_REMOVE, OP_HAVE = 0, 1, 2, 3
OP_NAMES = ("ADD", "GET", "REMOVE", "HAVE")

# Result bytes.
OK = 0x00
NOTOK = 0x01
DISCONNECTED = 0x02
ERR_CORRUPT = 0x64
ERR_MATCHING_SESSION = 0x65
ERR_TIMEOUT_RANGE = 0x66
ERR_ID_RANGE = 0x67
ERR_DATA_RANGE = 0x68

RESULT_NAMES = {
    OK: "OK",
    NOTOK: "NOTOK",
    DISCONNECTED: "DISCONNECTED",
    ERR_CORRUPT: "CORRUPT",
    ERR_MATCHING_SESSION: "MATCHING_SESSION",
    ERR_TIMEOUT_RANGE: "TIMEOUT_RANGE",
    ERR_ID_RANGE: "ID_RANGE",
    ERR_DATA_RANGE: "DATA_RANGE",
}

MAX_TIMEOUT_MS = 604800000  # seven days
MAX_ID_LEN = 64
MAX_DATA_LEN = 32768
ADD_PREFIX = struct.Struct(">II")

_EMPTY = b""
_VERSION_MASK = 0xFFFF0000


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow; close the connection.

    ``messages`` holds the complete messages decoded before the fault, which a
    server still answers before it closes.
    """

    def __init__(self, reason: str, messages: "Optional[List[Message]]" = None):
        super().__init__(reason)
        self.messages: "List[Message]" = [] if messages is None else messages


class Message(NamedTuple):
    """One complete request or response."""

    is_response: bool
    uid: int
    op: int
    payload: bytes

    def describe(self) -> str:
        kind = "response" if self.is_response else "request"
        return f"{OP_NAMES[self.op]} {kind} uid={self.uid} len={len(self.payload)}"


def encode(is_response: bool, uid: int, op: int, payload: bytes = _EMPTY) -> bytes:
    """Frame one message.  The payload must be at most :data:`MESSAGE_MAX` bytes."""
    n = len(payload)
    if n <= FRAME_MAX:
        return HEADER.pack(PROTO_LEVEL, is_response, uid, 0, op, 1, n) + payload
    if n > MESSAGE_MAX:
        raise ValueError(f"payload of {n} bytes exceeds {MESSAGE_MAX}")
    parts = []
    pack = HEADER.pack
    for start in range(0, n, FRAME_MAX):
        chunk = payload[start:start + FRAME_MAX]
        last = start + FRAME_MAX >= n
        parts.append(pack(PROTO_LEVEL, is_response, uid, 0, op, last, len(chunk)))
        parts.append(chunk)
    return _EMPTY.join(parts)


def encode_request(uid: int, op: int, payload: bytes = _EMPTY) -> bytes:
    return encode(False, uid, op, payload)


def encode_response(uid: int, op: int, payload: bytes = _EMPTY) -> bytes:
    return encode(True, uid, op, payload)


def encode_add_payload(session_id: bytes, data: bytes, timeout_ms: int) -> bytes:
    """The payload of an ADD request."""
    return ADD_PREFIX.pack(timeout_ms, len(session_id)) + session_id + data


class AddRequest(NamedTuple):
    timeout_ms: int
    session_id: bytes
    data: bytes


def parse_add(payload: bytes) -> "AddRequest | int":
    """Check an ADD payload in the C server's order.

    Returns the parsed request, or the result byte the server must answer with.
    A payload shorter than 8 bytes is a :class:`ProtocolError` (the C server closes).
    """
    if len(payload) < 8:
        raise ProtocolError(f"ADD payload of {len(payload)} bytes is shorter than 8")
    timeout_ms, id_len = ADD_PREFIX.unpack_from(payload)
    if timeout_ms > MAX_TIMEOUT_MS:
        return ERR_TIMEOUT_RANGE
    remaining = len(payload) - 8
    if id_len >= remaining:
        return ERR_CORRUPT
    if id_len == 0 or id_len > MAX_ID_LEN:
        return ERR_ID_RANGE
    if remaining - id_len > MAX_DATA_LEN:
        return ERR_DATA_RANGE
    return AddRequest(timeout_ms, payload[8:8 + id_len], payload[8 + id_len:])


_new_tuple = tuple.__new__  # a Message without NamedTuple's Python-level __new__


class Decoder:
    """Turns a byte stream into :class:`Message` objects.

    ``expect`` is ``False`` for a server (requests only), ``True`` for a client
    (responses only), or ``None`` to accept both (a protocol analyser).

    Once it has raised, a decoder stays failed (:attr:`failed` holds the fault) and
    refuses more input, so a connection's state after a fault lives here and its
    protocol keeps no flag of its own.
    """

    __slots__ = ("_buf", "_expect", "_parts", "_size", "_uid", "_op", "_resp", "_failed")

    def __init__(self, expect: Optional[bool] = False):
        self._buf = bytearray()
        self._expect = expect
        self._parts: List[bytes] = []
        self._size = 0
        self._uid = 0
        self._op = 0
        self._resp = False
        self._failed: Optional[ProtocolError] = None

    @property
    def failed(self) -> Optional[ProtocolError]:
        """The fault that ended decoding, or None while the stream is sound."""
        return self._failed

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a complete message."""
        return len(self._buf) + self._size

    @property
    def idle(self) -> bool:
        """True when no partial message is pending."""
        return not self._buf and not self._parts

    def feed(self, data: bytes) -> List[Message]:
        """Consume ``data``; return the messages it completes, in order.

        Raises :class:`ProtocolError` at the first fault, and on every call after it.
        """
        if self._failed is not None:
            raise ProtocolError(f"input after a fault ({self._failed})")
        buf = self._buf
        buf += data
        out: List[Message] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        usual = 1 if self._expect else 0  # the is_response byte the fast check expects
        try:
            while True:
                avail = end - pos
                if avail < HEADER_SIZE:
                    if avail >= 4 and (buf[pos] << 8 | buf[pos + 1]) != PROTO_VERSION:
                        self._bad_version(buf, pos)
                    break
                level, resp, uid, cls, op, complete, dlen = unpack(buf, pos)
                if level & _VERSION_MASK != PROTO_LEVEL:
                    self._bad_version(buf, pos)
                if resp != usual or cls or op > OP_HAVE or complete != 1 or dlen > FRAME_MAX:
                    self._check_header(resp, cls, op, complete, dlen)  # all the rules
                stop = pos + HEADER_SIZE + dlen
                if stop > end:
                    break
                payload = bytes(buf[pos + HEADER_SIZE:stop])
                pos = stop
                if not self._parts and complete:
                    out.append(_new_tuple(Message, (resp == 1, uid, op, payload)))
                    continue
                self._continue(resp, uid, op, payload)
                if complete:
                    out.append(Message(self._resp, self._uid, self._op,
                                       _EMPTY.join(self._parts)))
                    self._parts = []
                    self._size = 0
        except ProtocolError as e:
            e.messages = out
            self._failed = e
            self._buf = bytearray()
            self._parts = []
            self._size = 0
            raise
        finally:
            if pos and self._failed is None:
                del buf[:pos]
        return out

    def receive(self, data: bytes) -> Tuple[List[Message], Optional[ProtocolError]]:
        """Like :meth:`feed`, but a fault comes back beside the messages decoded before it.

        Peers answer those messages first and then close: that is what every
        connection of the suite does with a malformed stream.  Input after the fault
        is discarded (``([], None)``): the fault has been handed out once already.
        """
        if self._failed is not None:
            return [], None
        try:
            return self.feed(data), None
        except ProtocolError as e:
            return e.messages, e

    def _bad_version(self, buf: bytearray, pos: int) -> None:
        (level,) = struct.unpack_from(">I", buf, pos)
        raise ProtocolError(f"protocol level 0x{level:08x}, expected 0x{PROTO_LEVEL:08x}")

    def _check_header(self, resp, cls, op, complete, dlen) -> None:
        if resp > 1:
            raise ProtocolError(f"is_response byte {resp}")
        if self._expect is not None and resp != self._expect:
            raise ProtocolError("a response where a request belongs" if resp
                                else "a request where a response belongs")
        if cls != 0:
            raise ProtocolError(f"operation class {cls}")
        if op > OP_HAVE:
            raise ProtocolError(f"operation {op}")
        if complete > 1:
            raise ProtocolError(f"complete byte {complete}")
        if dlen > FRAME_MAX:
            raise ProtocolError(f"frame of {dlen} bytes exceeds {FRAME_MAX}")
        if not complete and dlen != FRAME_MAX:
            raise ProtocolError(f"non-final frame of {dlen} bytes")

    def _continue(self, resp: int, uid: int, op: int, payload: bytes) -> None:
        if self._parts:
            if uid != self._uid or op != self._op or resp != self._resp:
                raise ProtocolError("continuation frame with another uid or operation")
            if len(self._parts) >= FRAMES_MAX or self._size + len(payload) > MESSAGE_MAX:
                raise ProtocolError(f"message longer than {MESSAGE_MAX} bytes")
        else:
            self._uid, self._op, self._resp = uid, op, resp == 1
        self._parts.append(payload)
        self._size += len(payload)


def split_frames(data: bytes) -> List[Tuple[bytes, bytes]]:
    """Cut a well-formed byte string into (header, payload) pairs; for tests and tools."""
    out = []
    pos = 0
    while pos < len(data):
        header = data[pos:pos + HEADER_SIZE]
        dlen = HEADER.unpack(header)[-1]
        out.append((header, data[pos + HEADER_SIZE:pos + HEADER_SIZE + dlen]))
        pos += HEADER_SIZE + dlen
    return out
