"""The memcached text protocol, sans I/O: request bytes in, commands out; replies as bytes.

Only what a session cache needs: ``set``, ``add``, ``get``/``gets`` (several keys),
``delete``, ``touch``, ``version``, ``stats``, ``flush_all``, ``quit`` and ``noreply``.
The decoder follows memcached's rules on what keeps the connection and what ends it:
a malformed command line is answered ``CLIENT_ERROR ...`` and reading goes on with the
next line; an unknown command is answered ``ERROR``; a line longer than memcached
allows is answered ``CLIENT_ERROR line too long`` and ends the connection, after
which the decoder refuses more input.  A storage command whose value is too large
has its data block skipped without being buffered, so memory stays bounded.

Keys map onto distcache session ids by :func:`store_id`; expiry times onto
milliseconds by :func:`timeout_ms`.
"""

from __future__ import annotations

import hashlib
from typing import List, NamedTuple, Optional, Tuple, Union

from distcache import wire

KEY_MAX = 250
#: Longest command line accepted, as memcached (a ``get`` line may name many keys).
LINE_MAX = 2048
GET_LINE_MAX = 65536
#: The largest value a key may hold: what one distcache ADD carries beside the
#: longest session id (32768 - 8 - 64 bytes), so every value fits every store.
VALUE_MAX = wire.MESSAGE_MAX - wire.ADD_PREFIX.size - wire.MAX_ID_LEN
#: memcached reads an exptime above this many seconds as an absolute Unix time.
RELATIVE_MAX = 60 * 60 * 24 * 30
#: exptime 0 (no expiry) and anything longer is held for distcache's longest timeout.
TIMEOUT_MAX_MS = wire.MAX_TIMEOUT_MS
#: Keys longer than distcache's id limit are stored under their first bytes and a digest.
LONG_KEY_PREFIX = wire.MAX_ID_LEN - 32

STORAGE = (b"set", b"add", b"replace", b"append", b"prepend", b"cas")
SUPPORTED_STORAGE = (b"set", b"add")

CRLF = b"\r\n"
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
DELETED = b"DELETED\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
TOUCHED = b"TOUCHED\r\n"
END = b"END\r\n"
OK = b"OK\r\n"
ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
LINE_TOO_LONG = b"CLIENT_ERROR line too long\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
BAD_FLAGS = b"CLIENT_ERROR only flags 0 are stored\r\n"
FLUSH_DISABLED = b"CLIENT_ERROR flush_all not allowed\r\n"
FLUSH_DELAY = b"CLIENT_ERROR flush_all with a delay is not supported\r\n"


class MemcacheError(Exception):
    """Input after the decoder has ended the connection (``quit`` or a fatal fault)."""


class Command(NamedTuple):
    """One well-formed request.  ``name`` is the command word, e.g. ``b"get"``."""

    name: bytes
    keys: Tuple[bytes, ...] = ()
    flags: int = 0
    exptime: int = 0
    data: bytes = b""
    noreply: bool = False
    args: Tuple[bytes, ...] = ()


class Reject(NamedTuple):
    """A request answered by the codec itself; ``close`` ends the connection after it."""

    reply: bytes
    close: bool = False
    noreply: bool = False


Event = Union[Command, Reject]


def _number(token: bytes, signed: bool = False, bits: int = 32) -> Optional[int]:
    """memcached's strict whole numbers: digits only (a leading ``-`` if signed)."""
    body = token[1:] if signed and token[:1] == b"-" else token
    if not body.isdigit() or len(body) > 20:
        return None
    value = int(token)
    if value >= 1 << bits or (signed and value < -(1 << (bits - 1))):
        return None
    return value


def _tokens(line: bytes) -> List[bytes]:
    # memcached separates tokens with spaces only; runs of them count as one.
    return [t for t in line.split(b" ") if t]


class Decoder:
    """Turns a byte stream of requests into :class:`Command` and :class:`Reject` events."""

    __slots__ = ("_buf", "_pending", "_need", "_skip", "_skip_reply", "_skip_noreply",
                 "_closed")

    def __init__(self):
        self._buf = bytearray()
        self._pending: Optional[Command] = None   # a storage command awaiting its data
        self._need = 0                            # bytes of data block plus CRLF
        self._skip = 0                            # bytes of a refused data block to drop
        self._skip_reply: Optional[bytes] = None
        self._skip_noreply = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> List[Event]:
        if self._closed:
            raise MemcacheError("the connection has ended; no more requests are read")
        buf = self._buf
        buf += data
        out: List[Event] = []
        pos = 0
        try:
            while not self._closed:
                if self._skip:
                    take = min(self._skip, len(buf) - pos)
                    pos += take
                    self._skip -= take
                    if self._skip:
                        break
                    out.append(Reject(self._skip_reply, noreply=self._skip_noreply))
                    self._skip_reply = None
                    continue
                if self._pending is not None:
                    if len(buf) - pos < self._need:
                        break
                    end = pos + self._need
                    block = bytes(buf[pos:end - 2])
                    chunk_ok = buf[end - 2:end] == CRLF
                    pos = end
                    pending, self._pending = self._pending, None
                    if chunk_ok:
                        out.append(pending._replace(data=block))
                    else:
                        out.append(Reject(BAD_CHUNK, noreply=pending.noreply))
                    continue
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    self._check_partial_line(buf, pos, out)
                    break
                line = bytes(buf[pos:nl])
                pos = nl + 1
                if len(line) > self._line_limit(line):
                    out.append(Reject(LINE_TOO_LONG, close=True))
                    self._closed = True
                    break
                if line.endswith(b"\r"):
                    line = line[:-1]
                self._line(line, out)
        finally:
            if pos:
                del buf[:pos]
            if self._closed:
                buf.clear()
        return out

    @staticmethod
    def _line_limit(line) -> int:
        return GET_LINE_MAX if line[:4] in (b"get ", b"gets") else LINE_MAX

    def _check_partial_line(self, buf: bytearray, pos: int, out: List[Event]) -> None:
        if len(buf) - pos > self._line_limit(buf[pos:pos + 4]) + 1:
            out.append(Reject(LINE_TOO_LONG, close=True))
            self._closed = True

    def _line(self, line: bytes, out: List[Event]) -> None:
        tokens = _tokens(line)
        if not tokens:
            out.append(Reject(ERROR))
            return
        name = tokens[0]
        if name in STORAGE:
            self._storage(name, tokens, out)
        elif name in (b"get", b"gets"):
            keys = tuple(tokens[1:])
            if not keys:
                out.append(Reject(ERROR))
            elif any(len(k) > KEY_MAX for k in keys):
                out.append(Reject(BAD_FORMAT))
            else:
                out.append(Command(name, keys))
        elif name == b"delete":
            self._delete(tokens, out)
        elif name == b"touch":
            self._touch(tokens, out)
        elif name in (b"version", b"quit"):
            if len(tokens) != 1:
                out.append(Reject(ERROR))
            else:
                out.append(Command(name))
                if name == b"quit":
                    self._closed = True
        elif name == b"stats":
            out.append(Command(name, args=tuple(tokens[1:])))
        elif name == b"flush_all":
            self._flush_all(tokens, out)
        else:
            out.append(Reject(ERROR))

    def _storage(self, name: bytes, tokens: List[bytes], out: List[Event]) -> None:
        want = 6 if name == b"cas" else 5
        if len(tokens) not in (want, want + 1):
            out.append(Reject(ERROR))
            return
        noreply = len(tokens) == want + 1 and tokens[-1] == b"noreply"
        size = _number(tokens[4])
        if size is None:
            out.append(Reject(BAD_FORMAT, noreply=noreply))
            return
        key = tokens[1]
        flags = _number(tokens[2])
        exptime = _number(tokens[3], signed=True, bits=64)
        refusal = None
        if name not in SUPPORTED_STORAGE:
            refusal = ERROR
        elif len(key) > KEY_MAX or flags is None or exptime is None:
            refusal = BAD_FORMAT
        elif size > VALUE_MAX:
            refusal = TOO_LARGE
        elif flags != 0:
            refusal = BAD_FLAGS
        if refusal is not None:
            # The data block is dropped as it arrives, never buffered.
            self._skip = size + 2
            self._skip_reply = refusal
            self._skip_noreply = noreply and refusal is not ERROR
            return
        self._pending = Command(name, (key,), flags, exptime, noreply=noreply)
        self._need = size + 2

    def _delete(self, tokens: List[bytes], out: List[Event]) -> None:
        rest = tokens[2:]
        noreply = bool(rest) and rest[-1] == b"noreply"
        if noreply:
            rest = rest[:-1]
        if len(tokens) < 2 or len(rest) > 1 or (rest and rest[0] != b"0"):
            out.append(Reject(BAD_DELETE, noreply=noreply))
        elif len(tokens[1]) > KEY_MAX:
            out.append(Reject(BAD_FORMAT, noreply=noreply))
        else:
            out.append(Command(b"delete", (tokens[1],), noreply=noreply))

    def _touch(self, tokens: List[bytes], out: List[Event]) -> None:
        if len(tokens) not in (3, 4):
            out.append(Reject(ERROR))
            return
        noreply = len(tokens) == 4 and tokens[3] == b"noreply"
        exptime = _number(tokens[2], signed=True, bits=64)
        if len(tokens[1]) > KEY_MAX:
            out.append(Reject(BAD_FORMAT, noreply=noreply))
        elif exptime is None:
            out.append(Reject(BAD_EXPTIME, noreply=noreply))
        else:
            out.append(Command(b"touch", (tokens[1],), exptime=exptime, noreply=noreply))

    def _flush_all(self, tokens: List[bytes], out: List[Event]) -> None:
        rest = tokens[1:]
        noreply = bool(rest) and rest[-1] == b"noreply"
        if noreply:
            rest = rest[:-1]
        delay = _number(rest[0], signed=True) if len(rest) == 1 else 0
        if len(rest) > 1 or delay is None:
            out.append(Reject(BAD_FORMAT, noreply=noreply))
        else:
            out.append(Command(b"flush_all", exptime=delay, noreply=noreply))


# Replies.
def value(key: bytes, data: bytes, cas: Optional[int] = None) -> bytes:
    """One ``VALUE`` entry of a get or gets reply (flags are always 0)."""
    if cas is None:
        head = b"VALUE %s 0 %d\r\n" % (key, len(data))
    else:
        head = b"VALUE %s 0 %d %d\r\n" % (key, len(data), cas)
    return head + data + CRLF


def cas_unique(data: bytes) -> int:
    """A ``gets`` unique for a value: a digest of its bytes (``cas`` itself is refused)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") or 1


def version(text: str) -> bytes:
    return b"VERSION %s\r\n" % text.encode("ascii")


def stats(pairs) -> bytes:
    """``STAT name value`` lines and ``END`` from (name, value) pairs."""
    lines = [b"STAT %s %s\r\n" % (name.encode("ascii"), str(val).encode("ascii"))
             for name, val in pairs]
    return b"".join(lines) + END


def server_error(text: str) -> bytes:
    return b"SERVER_ERROR %s\r\n" % text.encode("ascii")


# The mapping onto distcache.
def store_id(key: bytes) -> bytes:
    """The distcache session id a memcache key is stored under.

    A key of up to 64 bytes is its own id, byte for byte, so a session added over
    distcache is the same entry over memcache.  A longer key (memcache allows 250;
    Apache's ``mod_ssl-sess:`` keys are 77) is stored under its first 32 bytes and
    the first 32 bytes of its SHA-256 digest: 64 bytes, as every distcache server
    accepts, distinct for distinct keys, and still readable in a trace.
    """
    if len(key) <= wire.MAX_ID_LEN:
        return key
    return key[:LONG_KEY_PREFIX] + hashlib.sha256(key).digest()[:32]


def timeout_ms(exptime: int, now: float) -> int:
    """memcached's exptime as distcache milliseconds; 0 or less means already expired.

    Up to 30 days it counts seconds from now; beyond, it is an absolute Unix time.
    0 means "never" and is held for distcache's longest timeout (7 days), which also
    caps every longer time; a negative exptime or a past Unix time expires at once.
    """
    if exptime == 0:
        return TIMEOUT_MAX_MS
    if exptime < 0:
        return 0
    if exptime > RELATIVE_MAX:
        seconds = exptime - now
        if seconds <= 0:
            return 0
        return min(TIMEOUT_MAX_MS, max(1, int(seconds * 1000)))
    return min(TIMEOUT_MAX_MS, exptime * 1000)
