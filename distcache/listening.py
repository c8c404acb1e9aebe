"""Listening on an address as a service, with the C tools' unix-socket ownership flags.

Binding happens in ``privilegedStartService`` so that it precedes twistd's ``--uid``/
``--gid`` privilege drop; the socket file's owner, group and mode are set right after
binding, while we may still change them.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import NamedTuple, Optional

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from distcache import address
from distcache.startup import StartupError


class SocketOwnership(NamedTuple):
    """``-sockowner``, ``-sockgroup`` and ``-sockperms`` for a unix socket."""

    owner: Optional[str] = None
    group: Optional[str] = None
    perms: Optional[int] = None


def parse_perms(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise usage.UsageError(f"--sockperms takes an octal mode such as 0660, not {text!r}")
    if not 0 <= mode <= 0o7777:
        raise usage.UsageError(f"--sockperms {text!r} is out of range")
    return mode


def check_owner(name: Optional[str]) -> None:
    if name is not None and not name.isdigit():
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise usage.UsageError(f"no such user {name!r}")


def check_group(name: Optional[str]) -> None:
    if name is not None and not name.isdigit():
        try:
            grp.getgrnam(name)
        except KeyError:
            raise usage.UsageError(f"no such group {name!r}")


def _uid(name: Optional[str]) -> int:
    if name is None:
        return -1
    return int(name) if name.isdigit() else pwd.getpwnam(name).pw_uid


def _gid(name: Optional[str]) -> int:
    if name is None:
        return -1
    return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid


class Listener(Service):
    """Listens on one address with one factory while running."""

    log = Logger()

    def __init__(self, addr: str, factory, ownership: SocketOwnership = SocketOwnership(),
                 reactor=None):
        self.address = address.parse(addr)
        self.factory = factory
        self.ownership = ownership
        self._reactor = reactor
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        addr = self.address
        if addr.kind == "unix":
            directory = os.path.dirname(addr.path) or "."
            if not os.path.isdir(directory):
                raise StartupError(f"cannot listen on {addr}: directory {directory} does not "
                                   f"exist; create it or choose another --listen")
            address.clear_stale_socket(addr.path)
        results = []
        address.server_endpoint(reactor, addr).listen(self.factory).addBoth(results.append)
        if not results:
            raise RuntimeError(f"listening on {addr} did not complete at once")
        outcome = results[0]
        if hasattr(outcome, "raiseException"):
            outcome.raiseException()
        self.port = outcome
        if addr.kind == "unix":
            self._apply_ownership(addr.path)
        self.log.info("listening on {address}", address=str(addr))

    def _apply_ownership(self, path: str) -> None:
        own = self.ownership
        if own.owner is not None or own.group is not None:
            os.chown(path, _uid(own.owner), _gid(own.group))
        if own.perms is not None:
            os.chmod(path, own.perms)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
