"""Addresses: the C tools' libnal syntax and Twisted endpoint strings, one code path.

libnal forms: ``UNIX:/path``, ``IP:host:port`` / ``IPv4:host:port`` (listen or
connect), ``IP:port`` and ``IP::port`` (listen on every interface).  We add
``IPv6:[host]:port`` (also ``IP:[host]:port``).  Anything else is handed to Twisted as an
endpoint string (``unix:``, ``tcp:``, ``tcp6:``, ``ssl:``, ``tls:``, ``systemd:``...), so
TLS and systemd socket activation work everywhere an address is taken.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import NamedTuple, Optional

from twisted.internet import endpoints

from distcache import unixstream


class AddressError(ValueError):
    """An address that cannot be understood."""


class Address(NamedTuple):
    """A parsed address: ``kind`` is ``unix``, ``tcp``, ``tcp6`` or ``endpoint``."""

    kind: str
    text: str
    host: Optional[str] = None
    port: Optional[int] = None
    path: Optional[str] = None

    def __str__(self) -> str:
        return self.text


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise AddressError(f"bad port {text!r} in address {whole!r}")
    return int(text)


def parse(text: str) -> Address:
    """Parse an address in either syntax."""
    if not text:
        raise AddressError("empty address")
    prefix, sep, rest = text.partition(":")
    if not sep:
        raise AddressError(f"address {text!r} has no prefix (e.g. UNIX:/path or IP:host:port)")
    if prefix == "UNIX":
        if not rest:
            raise AddressError(f"address {text!r} names no path")
        return Address("unix", text, path=rest)
    if prefix in ("IP", "IPv4", "IPv6"):
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if not bracket or not tail.startswith(":"):
                raise AddressError(f"bad IPv6 address {text!r}")
            return Address("tcp6", text, host=host, port=_port(tail[1:], text))
        host, sep2, port = rest.rpartition(":")
        if prefix == "IPv6":
            raise AddressError(f"IPv6 addresses take brackets: IPv6:[::1]:port, not {text!r}")
        return Address("tcp", text, host=host or None, port=_port(port, text))
    if prefix == "FD":
        raise AddressError(f"{text!r}: inherited descriptors are taken as systemd:domain=...:index=N")
    if prefix == "unix":
        return Address("unix", text, path=_unix_path(rest, text))
    return Address("endpoint", text)


def endpoint_fields(args: str):
    """``(positional, {keyword: value})`` of a Twisted endpoint string's arguments.

    ``args`` is what follows the prefix; ``\\`` escapes a ``:`` or ``=`` as Twisted's
    own parser does.
    """
    parts, current, escaped = [], [], False
    for ch in args:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    fields = dict(part.partition("=")[::2] for part in parts if "=" in part)
    return [part for part in parts if "=" not in part], fields


def _unix_path(args: str, whole: str) -> str:
    """The socket path of a Twisted ``unix:`` endpoint string."""
    positional, fields = endpoint_fields(args)
    for key in ("address", "path"):  # the server's and the client's keyword
        if key in fields:
            return fields[key]
    for part in positional:
        if part:
            return part
    raise AddressError(f"address {whole!r} names no path")


# Bursts of thousands of connections must queue, not be refused (Twisted's default is 50).
BACKLOG = 4096


# A unix socket is bound owner-only; --sockperms, --sockgroup or --sockowner open it.
OWNER_ONLY = 0o600


def server_description(addr: Address) -> str:
    """A Twisted server endpoint string for listening on ``addr``."""
    if addr.kind == "unix":
        if addr.text.startswith("unix:"):
            return addr.text
        return f"unix:{_escape(addr.path)}:backlog={BACKLOG}:mode={OWNER_ONLY:o}"
    if addr.kind == "tcp":
        iface = f":interface={_escape(addr.host)}" if addr.host else ""
        return f"tcp:{addr.port}{iface}:backlog={BACKLOG}"
    if addr.kind == "tcp6":
        return f"tcp6:{addr.port}:interface={_escape(addr.host or '::')}:backlog={BACKLOG}"
    return addr.text


def client_description(addr: Address) -> str:
    """A Twisted client endpoint string for connecting to ``addr``."""
    if addr.kind == "unix":
        if addr.text.startswith("unix:"):
            return addr.text
        return f"unix:path={_escape(addr.path)}"
    if addr.kind in ("tcp", "tcp6"):
        host = addr.host or ("127.0.0.1" if addr.kind == "tcp" else "::1")
        return f"tcp:host={_escape(host)}:port={addr.port}"
    return addr.text


def address_text(addr) -> str:
    """A connection's address as an operator writes it: ``host:port``, ``[v6]:port``, ``UNIX:/path``.

    Logs name peers this way, never by an address object's repr.
    """
    host = getattr(addr, "host", None)
    if host is not None:
        return f"[{host}]:{addr.port}" if ":" in host else f"{host}:{addr.port}"
    if addr is None:
        return "unknown"
    name = getattr(addr, "name", None)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if name:
        return f"UNIX:{name}"
    if type(addr).__name__ == "UNIXAddress":
        return "UNIX (unnamed)"
    return type(addr).__name__


def server_endpoint(reactor, addr: Address):
    if addr.kind == "unix":
        reactor = unixstream.reactor_for(reactor)
    return endpoints.serverFromString(reactor, server_description(addr))


def client_endpoint(reactor, addr: Address):
    if addr.kind == "unix":
        reactor = unixstream.reactor_for(reactor)
    return endpoints.clientFromString(reactor, client_description(addr))


def clear_stale_socket(path: str) -> None:
    """Remove a unix socket file nobody listens on, as the C tools do.

    A live socket, or a file that is not a socket, is left alone so that binding
    fails with a clear error rather than stealing a running server's address.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        raise
    else:
        raise AddressError(f"{path} is in use by a running server")
    finally:
        probe.close()
