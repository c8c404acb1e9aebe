"""The distcache client for programs without a reactor: plain sockets, one call at a time.

The connection modes are those of the C library's DC_CTX flags:

- ``Mode.PER_OPERATION`` (no flags): a new connection for every operation;
- ``Mode.PERSISTENT``: connect when the client is made and keep the connection;
- ``Mode.PERSISTENT_LATE``: connect on first use;
- ``Mode.PERSISTENT_PIDCHECK``: after ``os.fork()`` the child makes its own connection
  instead of sharing the parent's (and, unlike the C library, remembers its own pid,
  so it reconnects once rather than on every call);
- ``Mode.PERSISTENT_RETRY``: when an operation meets an I/O error, reconnect once and
  send the request again.

The last three combine with ``PERSISTENT`` and with each other, as the C flags do.
Unlike the C library, no call can hang: every socket has a timeout, and a reply that is
late, malformed or meant for another request raises a :class:`CacheError` and drops
the connection, so the next call starts on a clean stream (a persistent client
reconnects by itself).
"""

from __future__ import annotations

import enum
import itertools
import os
import socket
import ssl
import time
from typing import Optional

from distcache import address, wire
from distcache.replies import (CacheConnectionLost, CacheError, CacheTimeout,
                               CacheUnreachable, MalformedReply, UnexpectedReply,
                               add_payload, check_id, read_add, read_flag, read_get)

__all__ = ["Mode", "SessionCache", "CacheError", "socket_target"]

_RECV_SIZE = 65536
_uids = itertools.count(1)


def _next_uid() -> int:
    return next(_uids) & 0xFFFFFFFF


class Mode(enum.IntFlag):
    """Connection handling, as the C library's ``DC_CTX_FLAG_*``."""

    PER_OPERATION = 0
    PERSISTENT = 1
    PERSISTENT_PIDCHECK = 2
    PERSISTENT_RETRY = 4
    PERSISTENT_LATE = 8


def tls_settings(where: str):
    """``(ssl.SSLContext, server name)`` for a Twisted ``tls:`` string, else None.

    The same fields as Twisted's ``tls:`` client endpoint: ``trustRoots`` (a directory
    of PEM CA certificates; the system's otherwise), ``certificate`` and ``privateKey``
    (the client's own, for ``mtls:`` servers).  The server's name is always checked.
    """
    kind, _, rest = where.partition(":")
    if kind != "tls":
        return None
    positional, fields = address.endpoint_fields(rest)
    host = fields.get("host") or (positional[0] if positional else None)
    if not host:
        raise address.AddressError(f"{where!r} names no host")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    roots = fields.get("trustRoots")
    if roots:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        names = sorted(os.listdir(roots)) if os.path.isdir(roots) else []
        loaded = 0
        for name in names:
            try:
                context.load_verify_locations(cafile=os.path.join(roots, name))
                loaded += 1
            except (ssl.SSLError, OSError, ValueError):
                continue
        if not loaded:
            raise address.AddressError(f"trustRoots={roots} holds no PEM CA certificate")
    if fields.get("certificate"):
        context.load_cert_chain(fields["certificate"], fields.get("privateKey") or None)
    return context, host


def socket_target(where: str):
    """``(family, sockaddr)`` for a libnal address or a tcp:/unix:/tls: endpoint string."""
    addr = address.parse(where)
    if addr.kind == "unix":
        return socket.AF_UNIX, addr.path
    if addr.kind in ("tcp", "tcp6"):
        host = addr.host or ("127.0.0.1" if addr.kind == "tcp" else "::1")
        return None, (host, addr.port)
    kind, _, rest = addr.text.partition(":")
    if kind in ("tcp", "tcp6", "tls"):
        positional, fields = address.endpoint_fields(rest)
        if kind == "tls" and fields.get("endpoint"):
            return socket_target(fields["endpoint"])
        host = fields.get("host") or (positional[0] if positional else None)
        port = fields.get("port") or (positional[1] if len(positional) > 1 else None)
        if host and port and port.isdigit():
            return None, (host, int(port))
    raise address.AddressError(
        f"{where!r}: the blocking client connects to UNIX:, IP:, IPv6:, unix:, tcp: and tls: "
        "addresses (use distcache.client for other Twisted endpoints)")


class SessionCache:
    """A blocking distcache client.

    ``timeout`` (seconds) bounds connecting, and each operation from its send to the
    last byte of its reply.  Every failure is a :class:`CacheError`
    (:class:`CacheUnreachable` when no connection can be made).  One call at a time:
    give each thread its own client.
    """

    def __init__(self, where: str, mode: Mode = Mode.PER_OPERATION, timeout: float = 10.0):
        mode = Mode(mode)
        if mode and not mode & Mode.PERSISTENT:
            raise ValueError(f"{mode!r} needs Mode.PERSISTENT as well")
        self.where = where
        self.mode = mode
        self.timeout = timeout
        self._family, self._sockaddr = socket_target(where)
        self._tls = tls_settings(where)
        self._sock: Optional[socket.socket] = None
        self._pid = os.getpid()
        self.connections = 0  # connections made so far, in this process and its parent
        if mode & Mode.PERSISTENT and not mode & Mode.PERSISTENT_LATE:
            self._sock = self._connect()

    # Calls --------------------------------------------------------------

    def add_status(self, session_id: bytes, data: bytes, timeout_ms: int) -> int:
        """Store a session; return the server's result byte (0x00 stored)."""
        return read_add(self._transact(wire.OP_ADD, add_payload(session_id, data, timeout_ms)))

    def add(self, session_id: bytes, data: bytes, timeout_ms: int) -> bool:
        """Store a session; True only when the server stored it."""
        return self.add_status(session_id, data, timeout_ms) == wire.OK

    def get(self, session_id: bytes) -> Optional[bytes]:
        """The session's data, or None when the cache lacks it."""
        return read_get(self._transact(wire.OP_GET, check_id(session_id)))

    def remove(self, session_id: bytes) -> bool:
        """Forget a session; True when it was there."""
        return read_flag(wire.OP_REMOVE, self._transact(wire.OP_REMOVE, check_id(session_id)))

    def has(self, session_id: bytes) -> bool:
        """True when the cache holds the session, False when not."""
        return read_flag(wire.OP_HAVE, self._transact(wire.OP_HAVE, check_id(session_id)))

    def close(self) -> None:
        """Drop the persistent connection, if any."""
        self._drop()

    def __enter__(self) -> "SessionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Connections --------------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            if self._family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(self.timeout)
                    sock.connect(self._sockaddr)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._sockaddr, timeout=self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                context, server_name = self._tls
                try:
                    sock = context.wrap_socket(sock, server_hostname=server_name)
                except BaseException:
                    sock.close()
                    raise
        except OSError as e:
            raise CacheUnreachable(f"cannot connect to {self.where}: {e}") from e
        self.connections += 1
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _persistent_socket(self) -> socket.socket:
        if self.mode & Mode.PERSISTENT_PIDCHECK:
            pid = os.getpid()
            if pid != self._pid:
                # The parent's socket is shared with the parent: close only our
                # descriptor (no shutdown, which would cut the parent off too).
                self._pid = pid
                self._drop()
        if self._sock is None:
            self._sock = self._connect()
        return self._sock

    def _transact(self, op: int, payload: bytes) -> bytes:
        request_uid = _next_uid()
        request = wire.encode_request(request_uid, op, payload)
        if not self.mode & Mode.PERSISTENT:
            sock = self._connect()
            try:
                return _exchange(sock, request, request_uid, op)
            finally:
                sock.close()
        retry = bool(self.mode & Mode.PERSISTENT_RETRY)
        while True:
            sock = self._persistent_socket()
            try:
                return _exchange(sock, request, request_uid, op)
            except CacheConnectionLost:
                self._drop()
                if not retry:
                    raise
                retry = False
            except BaseException:
                # A timeout, a malformed or mismatched reply, or an interruption:
                # the stream is out of step, so start the next call afresh.
                self._drop()
                raise


def _exchange(sock: socket.socket, request: bytes, uid: int, op: int) -> bytes:
    """Send one request and read its reply payload, all within the socket's timeout."""
    limit = sock.gettimeout()
    deadline = time.monotonic() + limit
    try:
        sock.sendall(request)
    except socket.timeout:
        raise CacheTimeout("timed out sending the request")
    except OSError as e:
        raise CacheConnectionLost(f"sending the request failed: {e}") from e
    decoder = wire.Decoder(expect=True)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            sock.settimeout(remaining)
            try:
                data = sock.recv(_RECV_SIZE)
            except socket.timeout:
                raise CacheTimeout(f"no complete reply within {limit} s")
            except OSError as e:
                raise CacheConnectionLost(f"reading the reply failed: {e}") from e
            if not data:
                raise CacheConnectionLost(
                    "the cache closed the connection" +
                    (" in the middle of a reply" if decoder.buffered else " before replying"))
            try:
                messages = decoder.feed(data)
            except wire.ProtocolError as e:
                raise MalformedReply(f"malformed reply: {e}") from e
            if messages:
                break
    except socket.timeout:
        raise CacheTimeout(f"no complete reply within {limit} s")
    finally:
        sock.settimeout(limit)
    reply = messages[0]
    if reply.uid != uid or reply.op != op:
        raise UnexpectedReply(
            f"{wire.OP_NAMES[reply.op]} reply with uid {reply.uid} to a "
            f"{wire.OP_NAMES[op]} request with uid {uid}")
    if len(messages) > 1 or not decoder.idle:
        raise UnexpectedReply("the cache sent more than one reply to one request")
    return reply.payload
