"""``twistd dc_server``: options and the service tree of the cache server."""

from __future__ import annotations

import signal
from typing import List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from distcache import address, store_redis
from distcache.configured import ConfiguredService
from distcache.listening import (Listener, SocketOwnership, check_group, check_owner,
                                 parse_perms)
from distcache.server import CacheServerFactory
from distcache.store import SessionStore


def positive_int(name: str, text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} takes a whole number, not {text!r}")
    if value < minimum:
        raise usage.UsageError(f"--{name} must be at least {minimum}, not {value}")
    return value


class SocketOptions(usage.Options):
    """The unix-socket flags shared by every listening tool."""

    optParameters = [
        ["sockowner", None, None, "Owner (user name or uid) of a unix listening socket."],
        ["sockgroup", None, None, "Group (name or gid) of a unix listening socket."],
        ["sockperms", None, None, "Permissions (octal, e.g. 0660) of a unix listening socket."],
    ]

    def ownership(self) -> SocketOwnership:
        check_owner(self["sockowner"])
        check_group(self["sockgroup"])
        perms = parse_perms(self["sockperms"]) if self["sockperms"] is not None else None
        return SocketOwnership(self["sockowner"], self["sockgroup"], perms)


class Options(SocketOptions):
    synopsis = "--listen ADDR [--listen ADDR ...] [--sessions N] [--progress N]"
    longdesc = ("The distcache session cache server.  ADDR is UNIX:/path, IP:host:port, "
                "IP:port, IPv6:[host]:port or a Twisted endpoint string (unix:, tcp:, tcp6:, "
                "ssl:, systemd:).")

    optFlags = [
        ["killable", None, "Let SIGUSR1 and SIGUSR2 stop the server cleanly."],
    ]
    optParameters = [
        ["sessions", None, "512", "The most sessions the cache holds."],
        ["progress", None, "0", "Also log the activity line every N operations."],
        ["store", None, "local", "Where sessions live: 'local' (this process), or shared in "
         "redis://[:PASSWORD@]HOST:PORT[/DB], rediss://... (TLS) or "
         "redis+cluster://HOST:PORT[,HOST:PORT...] (see man dc_server)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, addr: str) -> None:
        """Address to listen on (repeatable)."""
        try:
            address.parse(addr)
        except address.AddressError as e:
            raise usage.UsageError(str(e))
        self["listen"].append(addr)

    def postOptions(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen ADDR is required")
        self["sessions"] = positive_int("sessions", self["sessions"])
        self["progress"] = positive_int("progress", self["progress"], minimum=0)
        self["ownership"] = self.ownership()
        if self["store"] != "local":
            try:
                store_redis.check(self["store"], self["sessions"])
            except store_redis.StoreURLError as e:
                raise usage.UsageError(f"--store {e}")


class CacheServerService(ConfiguredService):
    """dc_server as a service; holds only plain configuration until it starts."""

    program = "dc_server"

    log = Logger()
    runtime = ("factory", "session_store")

    def __init__(self, listen: List[str], sessions: int = 512, progress: int = 0,
                 ownership: SocketOwnership = SocketOwnership(), killable: bool = False,
                 reactor=None, store: str = "local"):
        super().__init__(reactor)
        self.listen = list(listen)
        self.sessions = sessions
        self.progress = progress
        self.ownership = ownership
        self.killable = killable
        self.store = store
        self.factory: Optional[CacheServerFactory] = None
        self.session_store = None

    def build(self, reactor) -> None:
        if self.store == "local":
            store = SessionStore(reactor, self.sessions)
        else:
            store = store_redis.open_store(self.store, reactor, self.sessions)
        self.session_store = store
        self.factory = CacheServerFactory(store, self.progress, clock=reactor)
        for addr in self.listen:
            Listener(addr, self.factory, self.ownership, reactor).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.log.info("dc_server started: {sessions} sessions at most, store {store}",
                      sessions=self.sessions, store=store_redis.shown(self.store))
        if self.killable:
            self._install_kill_signals()

    def _install_kill_signals(self) -> None:
        reactor = self.reactor

        def stop(signum, frame):
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGUSR1, stop)
        signal.signal(signal.SIGUSR2, stop)


    def stopService(self):
        stopped = super().stopService()
        close = getattr(self.session_store, "close", None)
        if close is None:
            return stopped
        return defer.gatherResults([defer.maybeDeferred(lambda: stopped), close()])


def makeService(options) -> CacheServerService:
    if options["store"] != "local":
        store_redis.use_asyncio_reactor()
    return CacheServerService(options["listen"], options["sessions"], options["progress"],
                              options["ownership"], options["killable"], store=options["store"])
