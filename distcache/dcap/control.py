"""Sans-IO DCAP control lines: requests in, reply lines out.

The control connection is line based ASCII.  This module knows nothing of
sockets: `RequestReader` turns received bytes into `Request`s (one per
line), and the reply builders make the lines the real libdcap client
accepts (pure ASCII, at most 4096 bytes).  Once the reader has raised
ProtocolError it stays failed and refuses further input, so its caller
keeps no "closing" flag of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

#: The client refuses reply lines longer than this (newline included).
MAX_REPLY_LENGTH = 4096
#: Longer request lines are a protocol violation (the real client's are far shorter).
MAX_LINE_LENGTH = 65536

_BLANKS = b" \t\r"


class ProtocolError(Exception):
    """The peer broke the control-line framing; the connection must close."""


class BadURL(ValueError):
    """A request named a path that cannot be decoded into a namespace path."""


@dataclass(frozen=True)
class Request:
    """One control line, split into the parts a door acts on.

    `args` are the positional words after the command; `options` maps each
    `-key` (value None) or `-key=value` to its last value, since the client
    may repeat a key and the last one wins.
    """

    sid: int
    cid: int
    name: str
    command: str
    args: Tuple[str, ...] = ()
    options: Dict[str, Optional[str]] = field(default_factory=dict)
    extras: Tuple[Tuple[str, Optional[str]], ...] = ()

    def option(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.options.get(key, default)

    def int_option(self, key: str, default: int) -> int:
        """An integer option; absent or malformed values give the default."""
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return int(value, 10)
        except ValueError:
            return default


def tokenise(line: bytes) -> List[str]:
    """Split a line on blanks; a double-quoted token may contain blanks.

    The quotes are stripped.  An unterminated quote runs to the end of the
    line.  Bytes are mapped one to one (latin-1) so nothing here can fail;
    deciding what a non-ASCII path means is the namespace's business.
    """
    tokens: List[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i:i + 1]
        if c in (b" ", b"\t", b"\r"):
            i += 1
            continue
        if c == b'"':
            end = line.find(b'"', i + 1)
            if end < 0:
                end = n
            tokens.append(line[i + 1:end].decode("latin-1"))
            i = end + 1
            continue
        j = i
        while j < n and line[j] not in _BLANKS:
            j += 1
        tokens.append(line[i:j].decode("latin-1"))
        i = j
    return tokens


def parse_options(words: Sequence[str]) -> Tuple[Tuple[str, ...], Dict[str, Optional[str]], Tuple[Tuple[str, Optional[str]], ...]]:
    """Separate positional words from `-key[=value]` options.

    Returns (positional, last-wins option map, every option in order); the
    ordered list keeps repeated `-X` extras for logging.
    """
    positional: List[str] = []
    options: Dict[str, Optional[str]] = {}
    ordered: List[Tuple[str, Optional[str]]] = []
    for word in words:
        if len(word) > 1 and word[0] == "-":
            key, sep, value = word[1:].partition("=")
            val: Optional[str] = value if sep else None
            options[key] = val
            ordered.append((key, val))
        else:
            positional.append(word)
    return tuple(positional), options, tuple(ordered)


def parse_request(line: bytes) -> Request:
    """Turn one control line (without its newline) into a `Request`.

    Raises `ProtocolError` for fewer than four tokens or non-numeric ids,
    the cases where the real door drops the connection.
    """
    tokens = tokenise(line)
    if len(tokens) < 4:
        raise ProtocolError("expected at least 4 tokens, got %d" % (len(tokens),))
    sid_text, cid_text = tokens[0], tokens[1]
    if not (_is_decimal(sid_text) and _is_decimal(cid_text)):
        raise ProtocolError("session and command ids must be numbers")
    positional, options, ordered = parse_options(tokens[4:])
    return Request(
        sid=int(sid_text),
        cid=int(cid_text),
        name=tokens[2],
        command=tokens[3],
        args=positional,
        options=options,
        extras=ordered,
    )


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class RequestReader:
    """Received bytes in, one `Request` per newline-terminated line out.

    `next_request()` returns the next Request or `NEED_DATA`; it raises
    ProtocolError for a line `parse_request` rejects or one longer than
    `max_line` bytes.  After that the reader is `failed`: what was buffered
    is dropped and any further call raises again.
    """

    def __init__(self, max_line: int = MAX_LINE_LENGTH) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self.failed = False

    def receive_data(self, data: bytes) -> None:
        if self.failed:
            raise ProtocolError("data after a protocol error")
        self._buf += data

    def next_request(self):
        if self.failed:
            raise ProtocolError("reader failed earlier")
        try:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                self._scanned = len(self._buf)
                if len(self._buf) > self.max_line:
                    raise ProtocolError("line longer than %d bytes" % (self.max_line,))
                return NEED_DATA
            if end > self.max_line:
                raise ProtocolError("line longer than %d bytes" % (self.max_line,))
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            self._scanned = 0
            return parse_request(line)
        except ProtocolError:
            self.failed = True
            self._buf.clear()
            raise


_DECIMAL = re.compile(r"\A[0-9]{1,18}\Z")


def _is_decimal(text: str) -> bool:
    return _DECIMAL.match(text) is not None


def decode_mode(text: Optional[str], default: int) -> int:
    """Decode a `-mode` value like Java's Integer.decode (dec, 0-octal, 0x-hex)."""
    if text is None or text == "":
        return default
    s = text.strip()
    try:
        if s.lower().startswith("0x"):
            return int(s[2:], 16)
        if len(s) > 1 and s.startswith("0"):
            return int(s[1:], 8)
        return int(s, 10)
    except ValueError:
        return default


#: A pnfs id as libdcap sends it in place of a URL (names resolved through a mount).
PNFSID = re.compile(r"[0-9A-Fa-f]{24}(?:[0-9A-Fa-f]{12})?")


def is_pnfsid(text: str) -> bool:
    """True when an open's first argument is a pnfs id rather than a URL or path."""
    return PNFSID.fullmatch(text) is not None


#: dcap://, dcaps://, and dcap:// behind a tunnel's prefix (gsidcap://, ssldcap://...),
#: which libdcap sends as the client wrote it.
_URL_SCHEME = re.compile(r"[A-Za-z0-9]{0,16}dcaps?://", re.IGNORECASE)


def decode_url(url: str) -> str:
    """Map `[prefix]dcap://host[:port]/<%-encoded path>` (or a bare path) to a path.

    As in dCache, any scheme that ends in ``dcap`` (dcap, dcaps, gsidcap,
    kerberos variants) names the door when an authority follows.  The host
    and port are dropped, %-escapes decoded (as UTF-8) and runs
    of `/` collapsed.  Raises `BadURL` when the result is not a usable
    absolute path text.
    """
    text = url
    if _URL_SCHEME.match(text):
        rest = text.split("://", 1)[1]
        slash = rest.find("/")
        text = "/" if slash < 0 else rest[slash:]
    if "?" in text:
        text = text.split("?", 1)[0]
    try:
        raw = unquote_to_bytes(text.encode("latin-1"))
        path = raw.decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError) as e:
        raise BadURL("path is not valid UTF-8") from e
    if not path.startswith("/"):
        raise BadURL("path must be absolute")
    if "\x00" in path:
        raise BadURL("path contains NUL")
    path = re.sub("/+", "/", path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


# ---------------------------------------------------------------- replies

def escape(text: str) -> str:
    """Make text safe inside a quoted reply word: ASCII printable only.

    Backslash, double quote, control characters and anything above 126 are
    written as `\\xNN` (or `\\uNNNN`) so the client never sees a byte >127.
    """
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\" or ch == '"' or o < 32 or o > 126:
            out.append("\\x%02x" % o if o < 256 else "\\u%04x" % o)
        else:
            out.append(ch)
    return "".join(out)


def quote(text: str) -> str:
    return '"' + escape(text) + '"'


def reply(sid: int, cid: int, name: str, *words: str) -> bytes:
    """Build one reply line; refuse to emit anything the client rejects."""
    line = " ".join((str(sid), str(cid), name) + words)
    data = line.encode("ascii")
    if len(data) + 1 > MAX_REPLY_LENGTH:
        raise ValueError("reply line longer than %d bytes" % (MAX_REPLY_LENGTH,))
    return data + b"\n"


def ok(sid: int, cid: int) -> bytes:
    return reply(sid, cid, "client", "ok")


def failed(sid: int, cid: int, rc: int, message: str, posix: Optional[str] = None) -> bytes:
    """A `failed` reply; an over-long message is shortened, never dropped."""
    words = [str(rc), quote(message)]
    if posix:
        words.append(posix)
    budget = MAX_REPLY_LENGTH - 200
    if len(words[1]) > budget:
        words[1] = quote(message[: budget // 4] + "...")
    return reply(sid, cid, "client", "failed", *words)


def welcome(major: str, minor: str) -> bytes:
    return reply(0, 0, "server", "welcome", major, minor)


def status(sid: int, cid: int, text: str) -> bytes:
    """A `status` answer: ``ok``, two spaces, 0 and the quoted state, as dCache writes it."""
    return reply(sid, cid, "client", "ok", "", "0", quote(text))


def pong(sid: int, cid: int) -> bytes:
    return reply(sid, cid, "server", "pong")


def connect(sid: int, cid: int, host: str, port: int, challenge: str) -> bytes:
    return reply(sid, cid, "client", "connect", host, str(port), challenge)


def byebye(sid: int, cid: int) -> bytes:
    return reply(sid, cid, "server", "byebye")


def protocol_violation(reason: str) -> bytes:
    """The line sent just before closing a connection that broke framing."""
    return ("protocol violation: " + escape(reason)[:1000] + "\n").encode("ascii")


_PERM = "rwxrwxrwx"


def mode_string(kind: str, mode: int) -> str:
    """The 10-character `ls -l` form dccp needs (`-`, `d` or `l` first)."""
    bits = "".join(_PERM[i] if mode & (1 << (8 - i)) else "-" for i in range(9))
    return {"dir": "d", "link": "l"}.get(kind, "-") + bits


def stat_reply(sid: int, cid: int, *, size: int, uid: int, gid: int,
               atime: int, mtime: int, ctime: int, kind: str, mode: int,
               ino: int, nlink: int = 1) -> bytes:
    return reply(
        sid, cid, "client", "stat",
        "-st_size=%d" % size, "-st_uid=%d" % uid, "-st_gid=%d" % gid,
        "-st_atime=%d" % atime, "-st_mtime=%d" % mtime, "-st_ctime=%d" % ctime,
        "-st_mode=%s" % mode_string(kind, mode), "-st_ino=%d" % ino,
        "-st_nlink=%d" % nlink,
    )
