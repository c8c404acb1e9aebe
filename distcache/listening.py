"""Listening on an address as a service, with the C tools' unix-socket ownership flags.

Binding happens in ``privilegedStartService`` so that it precedes twistd's ``--uid``/
``--gid`` privilege drop; the socket file's owner, group and mode are set right after
binding, while we may still change them.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Dict, NamedTuple, Optional

from twisted.application.service import Service
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python import usage

from distcache import address
from distcache.ratelimit import RateLimitedLogs
from distcache.startup import StartupError


class SocketOwnership(NamedTuple):
    """``-sockowner``, ``-sockgroup`` and ``-sockperms`` for a unix socket."""

    owner: Optional[str] = None
    group: Optional[str] = None
    perms: Optional[int] = None


class ConnectionLimits(NamedTuple):
    """The most connections a listener holds at once, in total and from one IP address.

    0 means no limit.  Unix-socket peers have no address, so only ``total`` applies
    to them.
    """

    total: int = 0
    per_peer: int = 0
    #: the options that set them, as the log names them
    option: str = "max-connections"
    per_peer_option: str = "max-connections-per-peer"


#: no limit at all: what a listener gets unless its tool gives it one
UNLIMITED = ConnectionLimits()


class _Refused(Protocol):
    """What a connection over a limit gets: closed as soon as it is made.

    A protocol rather than ``None`` from ``buildProtocol``, so that a wrapping factory
    (TLS, mTLS) in front of the limit is refused cleanly too.
    """

    def makeConnection(self, transport) -> None:
        transport.abortConnection()


class LimitedFactory:
    """Stands at the port in front of a factory: counts its connections, refuses the excess.

    Nothing is added to a connection's reads or writes; a counted protocol gets its
    ``connectionLost`` wrapped once, to count it out.  Reaching a limit is logged once
    per episode: a line when it is first reached, and a line when the listener is back
    under it with how many connections were refused meanwhile.  Per-peer episodes are
    logged the same way, rate-limited, since there may be many peers.
    """

    log = Logger()

    def __init__(self, factory, limits: ConnectionLimits, clock, name: str = "listener"):
        self.factory = factory
        self.limits = limits
        self.name = name
        self.connections = 0
        self.refused = 0
        self._per_peer: Dict[str, int] = {}
        self._episode_refused: Optional[int] = None  # refused since the total was reached
        self._peer_refused: Dict[str, int] = {}      # peers at their limit: refused since
        self._warnings = RateLimitedLogs(self.log, clock)

    def __getattr__(self, name):
        # noisy, doStart, doStop, logPrefix, ...: the port sees the wrapped factory
        return getattr(self.factory, name)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()
        self._warnings.stop()

    def peers(self) -> int:
        """Distinct IP addresses connected now."""
        return len(self._per_peer)

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        limits = self.limits
        if limits.total and self.connections >= limits.total:
            return self._refuse_total()
        if host is not None and limits.per_peer and \
                self._per_peer.get(host, 0) >= limits.per_peer:
            return self._refuse_peer(host)
        protocol = self.factory.buildProtocol(addr)
        if protocol is None:
            return None
        self.connections += 1
        if host is not None:
            self._per_peer[host] = self._per_peer.get(host, 0) + 1
        lost = protocol.connectionLost

        def connectionLost(reason=None):
            del protocol.connectionLost  # the class's own again: counted out only once
            self._release(host)
            lost(reason)

        protocol.connectionLost = connectionLost
        return protocol

    def _refuse_total(self) -> Protocol:
        self.refused += 1
        if self._episode_refused is None:
            self._episode_refused = 0
            self.log.warn(
                "{name}: {count} connections, the most allowed (--{option}); "
                "refusing new connections until some close",
                name=self.name, count=self.connections, option=self.limits.option)
        self._episode_refused += 1
        return _Refused()

    def _refuse_peer(self, host: str) -> Protocol:
        self.refused += 1
        if host not in self._peer_refused:
            self._peer_refused[host] = 0
            self._warnings["peers at their connection limit"].warn(
                "{name}: {peer} has {count} connections, the most allowed from one address "
                "(--{option}); refusing its new connections until some close",
                name=self.name, peer=host, count=self._per_peer[host],
                option=self.limits.per_peer_option)
        self._peer_refused[host] += 1
        return _Refused()

    def _release(self, host: Optional[str]) -> None:
        self.connections -= 1
        if host is not None:
            left = self._per_peer[host] - 1
            if left:
                self._per_peer[host] = left
            else:
                del self._per_peer[host]
            if host in self._peer_refused and left < self.limits.per_peer:
                refused = self._peer_refused.pop(host)
                self._warnings["peers back under their connection limit"].warn(
                    "{name}: {peer} is back under its connection limit; "
                    "{refused} of its connections were refused meanwhile",
                    name=self.name, peer=host, refused=refused)
        if self._episode_refused is not None and self.connections < self.limits.total:
            refused, self._episode_refused = self._episode_refused, None
            self.log.info(
                "{name}: back under the connection limit ({count} connections); "
                "{refused} connections were refused meanwhile",
                name=self.name, count=self.connections, refused=refused)


def parse_limit(option: str, text) -> int:
    """A connection limit from an option: a whole number, 0 meaning none."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{option} takes a whole number (0: no limit), not {text!r}")
    if value < 0:
        raise usage.UsageError(f"--{option} must be 0 (no limit) or more, not {value}")
    return value


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


def socket_mode(own: SocketOwnership, text: str = "") -> Optional[int]:
    """The mode to give a unix listening socket after binding, or None to leave it.

    ``--sockperms`` is taken as given; ``--sockgroup`` alone opens the socket to its
    group (0660); otherwise only the owner may connect (0600), so that no other local
    user can read or plant sessions.  A ``UNIX:/path`` address is bound 0600 already
    (see ``address.server_description``); a ``unix:...:mode=`` endpoint string keeps the
    mode it names, and one without gets 0600 too.
    """
    if own.perms is not None:
        return own.perms
    if own.group is not None:
        return 0o660
    if text.startswith("unix:") and ":mode=" not in text:
        return address.OWNER_ONLY
    return None


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
                 reactor=None, limits: ConnectionLimits = UNLIMITED):
        self.address = address.parse(addr)
        self.factory = factory
        self.ownership = ownership
        self.limits = limits
        self._reactor = reactor
        self.port = None
        #: the counting stand-in for ``factory`` while listening with limits
        self.limited: Optional[LimitedFactory] = None

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
        factory = self.factory
        if self.limits.total or self.limits.per_peer:
            factory = self.limited = LimitedFactory(self.factory, self.limits, reactor,
                                                    name=str(addr))
        results = []
        address.server_endpoint(reactor, addr).listen(factory).addBoth(results.append)
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
        mode = socket_mode(own, self.address.text)
        if mode is not None:
            os.chmod(path, mode)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
