"""What a cache client sends and how it reads the answers, shared by both client APIs.

Sans I/O: request payloads are built and checked here, and each reply payload is
turned into a Python value or a :class:`CacheError`, so the Twisted and the blocking
clients agree to the byte on what every reply means.

GET follows the protocol, not the C library: the single byte 0x01 is a miss and any
other reply is the session's data.  (The C library calls every reply shorter than five
bytes a miss.)  Two answers are errors rather than data: an empty payload, which is
how dc_client answers while its server is unreachable, and the single byte 0x02,
which dc_client sends for a request in flight when its server connection dropped.  So
a session whose data is exactly ``b"\\x01"`` or ``b"\\x02"`` cannot be told from those
answers; real TLS sessions are far longer.
"""

from __future__ import annotations

from typing import Optional

from distcache import wire


class CacheError(Exception):
    """Something went wrong talking to the cache."""


class CacheUnavailable(CacheError):
    """The cache answered with an empty payload: dc_client cannot reach its server."""


class CacheDisconnected(CacheError):
    """The cache answered 0x02: dc_client lost its server while the request was in flight."""


class UnexpectedReply(CacheError):
    """A well-framed reply that does not answer the request (wrong uid, operation or size)."""


class MalformedReply(CacheError):
    """Bytes that are not a distcache reply at all; the connection cannot be trusted."""


class CacheUnreachable(CacheError):
    """No connection to the cache could be made."""


class CacheConnectionLost(CacheError):
    """The connection closed (or failed) before the reply arrived."""


class CacheTimeout(CacheError):
    """No complete reply arrived in time."""


_MISS = b"\x01"
_DISCONNECTED = b"\x02"


def check_id(session_id: bytes) -> bytes:
    """Refuse ids no cache accepts, before a byte is sent."""
    if not isinstance(session_id, (bytes, bytearray, memoryview)):
        raise TypeError(f"session id must be bytes, not {type(session_id).__name__}")
    session_id = bytes(session_id)
    if not 1 <= len(session_id) <= wire.MAX_ID_LEN:
        raise ValueError(f"session id of {len(session_id)} bytes; 1 to {wire.MAX_ID_LEN} allowed")
    return session_id


def add_payload(session_id: bytes, data: bytes, timeout_ms: int) -> bytes:
    """The ADD request payload, refusing what the server would refuse anyway."""
    session_id = check_id(session_id)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"session data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError("session data must not be empty")
    timeout_ms = int(timeout_ms)
    if not 0 <= timeout_ms <= wire.MAX_TIMEOUT_MS:
        raise ValueError(f"timeout of {timeout_ms} ms; 0 to {wire.MAX_TIMEOUT_MS} allowed")
    payload = wire.encode_add_payload(session_id, data, timeout_ms)
    if len(payload) > wire.MESSAGE_MAX:
        raise ValueError(f"id and data take {len(payload) - 8} bytes; "
                         f"at most {wire.MESSAGE_MAX - 8} fit in one request")
    return payload


def _status_error(op: int, payload: bytes) -> CacheError:
    name = wire.OP_NAMES[op]
    if not payload:
        return CacheUnavailable(f"{name}: empty reply (the cache server is unreachable)")
    if payload == _DISCONNECTED:
        return CacheDisconnected(f"{name}: the cache server connection dropped in flight")
    shown = payload[:16].hex() + ("..." if len(payload) > 16 else "")
    return UnexpectedReply(f"{name}: unexpected reply of {len(payload)} bytes ({shown})")


def read_add(payload: bytes) -> int:
    """The result byte of an ADD (0x00 stored; see :data:`wire.RESULT_NAMES`)."""
    if len(payload) != 1:
        raise _status_error(wire.OP_ADD, payload)
    return payload[0]


def read_get(payload: bytes) -> Optional[bytes]:
    """The session data, or None for a miss."""
    if payload == _MISS:
        return None
    if not payload or payload == _DISCONNECTED:
        raise _status_error(wire.OP_GET, payload)
    return payload


def read_flag(op: int, payload: bytes) -> bool:
    """REMOVE and HAVE: 0x00 is True, 0x01 is False, anything else an error."""
    if payload == b"\x00":
        return True
    if payload == _MISS:
        return False
    raise _status_error(op, payload)


def read_reply(op: int, payload: bytes):
    """The value of a reply to ``op``: see the ``read_*`` functions."""
    if op == wire.OP_ADD:
        return read_add(payload)
    if op == wire.OP_GET:
        return read_get(payload)
    return read_flag(op, payload)
