"""``twistd dc_server``: options and the service tree of the cache server."""

from __future__ import annotations

import signal
from typing import List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python import usage

from distcache import address, store_redis
from distcache.version import opt_version
from distcache.configured import ConfiguredService
from distcache.counting import CountingStore, StoreCounters
from distcache.listening import (ConnectionLimits, Listener, SocketOwnership, check_group,
                                 check_owner, parse_limit, parse_perms)
from distcache.memcache_server import MemcacheFactory, store_stats
from distcache.metrics import ServerCollector, metrics_listener, registry_of
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


def checked(addr: str, flag: str = "--listen") -> str:
    """The address, or a usage error that names the flag it was given to."""
    try:
        address.parse(addr)
    except address.AddressError as e:
        raise usage.UsageError(f"{flag}: {e}")
    return addr


class SocketOptions(usage.Options):
    """The unix-socket and connection-limit flags shared by every listening tool."""

    #: the tool's limits when no option changes them
    default_limits = ConnectionLimits(total=16384, per_peer=4096)

    optParameters = [
        ["sockowner", None, None, "Owner (user name or uid) of a unix listening socket."],
        ["sockgroup", None, None, "Group (name or gid) of a unix listening socket; "
         "without --sockperms the socket is then 0660."],
        ["sockperms", None, None, "Permissions (octal, e.g. 0660) of a unix listening socket "
         "(default 0600: the owner only)."],
        ["max-connections", None, None, "The most connections each listener holds at once "
         "(0: no limit)."],
        ["max-connections-per-peer", None, None, "The most connections each listener holds "
         "from one IP address (0: no limit)."],
    ]

    def __init__(self):
        super().__init__()
        # the defaults differ per tool: --help shows this tool's own
        for name, value in (("max-connections", self.default_limits.total),
                            ("max-connections-per-peer", self.default_limits.per_peer)):
            self[name] = self.defaults[name] = str(value)

    def limits(self) -> ConnectionLimits:
        """The connection limits the options give, the tool's defaults where unset."""
        return ConnectionLimits(parse_limit("max-connections", self["max-connections"]),
                                parse_limit("max-connections-per-peer",
                                            self["max-connections-per-peer"]))

    def ownership(self) -> SocketOwnership:
        check_owner(self["sockowner"])
        check_group(self["sockgroup"])
        perms = parse_perms(self["sockperms"]) if self["sockperms"] is not None else None
        return SocketOwnership(self["sockowner"], self["sockgroup"], perms)


#: seconds a connection may stay quiet; dc_client reconnects at once when it is closed
DEFAULT_IDLE_TIMEOUT = 3600


class Options(SocketOptions):

    program = "dc_server"
    opt_version = opt_version
    synopsis = "--listen ADDR [--listen ADDR ...] [--sessions N] [--progress N]"
    longdesc = ("The distcache session cache server.  ADDR is UNIX:/path, IP:host:port, "
                "IP:port, IPv6:[host]:port or a Twisted endpoint string (unix:, tcp:, tcp6:, "
                "ssl:, systemd:).")

    optFlags = [
        ["killable", None, "Let SIGUSR1 and SIGUSR2 stop the server cleanly."],
        ["memcache-flush-all", None, "Let memcache clients run flush_all (refused otherwise)."],
    ]
    optParameters = [
        ["sessions", None, "512", "The most sessions the cache holds."],
        ["progress", None, "0", "Also log the activity line every N operations."],
        ["idle-timeout", None, str(DEFAULT_IDLE_TIMEOUT), "Close connections nothing was read "
         "from for this many seconds (0: never)."],
        ["metrics", None, None, "Serve Prometheus metrics over HTTP at /metrics on ADDR."],
        ["store", None, "local", "Where sessions live: 'local' (this process), or shared in "
         "redis://[:PASSWORD@]HOST:PORT[/DB], rediss://... (TLS) or "
         "redis+cluster://HOST:PORT[,HOST:PORT...] (see man dc_server)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["memcache-listen"] = []

    def opt_listen(self, addr: str) -> None:
        """Address to listen on (repeatable)."""
        self["listen"].append(checked(addr))

    def opt_memcache_listen(self, addr: str) -> None:
        """Address to answer the memcached text protocol on (repeatable)."""
        self["memcache-listen"].append(checked(addr, "--memcache-listen"))

    def postOptions(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen ADDR is required")
        self["sessions"] = positive_int("sessions", self["sessions"])
        self["progress"] = positive_int("progress", self["progress"], minimum=0)
        self["idle-timeout"] = positive_int("idle-timeout", self["idle-timeout"], minimum=0)
        if self["metrics"] is not None:
            checked(self["metrics"], "--metrics")
        self["ownership"] = self.ownership()
        self["limits"] = self.limits()
        if self["store"] != "local":
            try:
                store_redis.check(self["store"], self["sessions"])
            except store_redis.StoreURLError as e:
                raise usage.UsageError(f"--store {e}")


class CacheServerService(ConfiguredService):
    """dc_server as a service; holds only plain configuration until it starts."""

    program = "dc_server"

    log = Logger()
    runtime = ("factory", "memcache", "session_store")

    def __init__(self, listen: List[str], sessions: int = 512, progress: int = 0,
                 ownership: SocketOwnership = SocketOwnership(), killable: bool = False,
                 reactor=None, memcache_listen: List[str] = (), memcache_flush_all: bool = False,
                 metrics: Optional[str] = None, store: str = "local",
                 limits: ConnectionLimits = Options.default_limits,
                 idle_timeout: int = DEFAULT_IDLE_TIMEOUT):
        super().__init__(reactor)
        self.listen = list(listen)
        self.sessions = sessions
        self.progress = progress
        self.ownership = ownership
        self.killable = killable
        self.memcache_listen = list(memcache_listen)
        self.memcache_flush_all = memcache_flush_all
        self.metrics = metrics
        self.store = store
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.factory: Optional[CacheServerFactory] = None
        self.memcache: Optional[MemcacheFactory] = None
        self.session_store = None

    def __setstate__(self, state):
        state = dict(state)  # settings added since a tap was written take their defaults
        state.setdefault("memcache_listen", [])
        state.setdefault("memcache_flush_all", False)
        state.setdefault("metrics", None)
        state.setdefault("store", "local")
        state.setdefault("limits", Options.default_limits)
        state.setdefault("idle_timeout", DEFAULT_IDLE_TIMEOUT)
        super().__setstate__(state)

    def build(self, reactor) -> None:
        if self.store == "local":
            engine = SessionStore(reactor, self.sessions)
        else:
            engine = store_redis.open_store(self.store, reactor, self.sessions)
        self.session_store = engine
        counters = StoreCounters()
        store = CountingStore(engine, counters)
        self.factory = CacheServerFactory(store, self.progress, clock=reactor,
                                          idle_timeout=self.idle_timeout)
        self.factory.counters = counters
        for addr in self.listen:
            Listener(addr, self.factory, self.ownership, reactor,
                     self.limits).setServiceParent(self)
        factory = self.factory
        self.memcache = MemcacheFactory(
            store, reactor, store_stats(store.store, counters, lambda: factory.connections),
            allow_flush=self.memcache_flush_all)
        for addr in self.memcache_listen:
            Listener(addr, self.memcache, self.ownership, reactor,
                     self.limits).setServiceParent(self)
        if self.metrics is not None:
            registry = registry_of(ServerCollector(factory, store.store, counters, self.memcache))
            metrics_listener(self.metrics, registry, self.ownership,
                             reactor).setServiceParent(self)

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
                              options["ownership"], options["killable"],
                              memcache_listen=options["memcache-listen"],
                              memcache_flush_all=bool(options["memcache-flush-all"]),
                              metrics=options["metrics"], store=options["store"],
                              limits=options["limits"], idle_timeout=options["idle-timeout"])
