"""``twistd dc_client``: options and the service tree of the local proxy."""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from distcache import address
from distcache.version import opt_version
from distcache.configured import ConfiguredService
from distcache.listening import ConnectionLimits, Listener, SocketOwnership
from distcache.memcache_relay import RelayStore, relay_stats
from distcache.memcache_server import MemcacheFactory
from distcache.metrics import ClientCollector, metrics_listener, registry_of
from distcache.proxy import LocalFactory
from distcache.server_tap import SocketOptions, checked, positive_int
from distcache.upstream import ServerLink

DEFAULT_LISTEN = "UNIX:/tmp/scache"


def checked_address(option: str, text: str) -> str:
    try:
        address.parse(text)
    except address.AddressError as e:
        raise usage.UsageError(f"--{option}: {e}")
    return text


class Options(SocketOptions):

    program = "dc_client"
    opt_version = opt_version
    default_limits = ConnectionLimits(total=4096, per_peer=4096)
    synopsis = "--server ADDR [--server ADDR ...] [--listen ADDR] [--retry MS] [--idle MS]"
    longdesc = ("The distcache client proxy: local clients share one persistent connection "
                "to dc_server.  Several servers are tried in order, and the first that "
                "answers is used.  ADDR is UNIX:/path, IP:host:port, IP:port, "
                "IPv6:[host]:port or a Twisted endpoint string (unix:, tcp:, tcp6:, ssl:, "
                "tls:, systemd:).")

    optParameters = [
        ["listen", None, DEFAULT_LISTEN, "Address local clients connect to."],
        ["retry", None, "5000", "Milliseconds between rounds of attempts to reach a server, "
                                "and between probes of an earlier server."],
        ["idle", None, "0", "Close local connections idle this many milliseconds (0: never)."],
        ["metrics", None, None, "Serve Prometheus metrics over HTTP at /metrics on ADDR."],
    ]

    def __init__(self):
        super().__init__()
        self["memcache-listen"] = []
        self["servers"] = []

    def opt_memcache_listen(self, addr: str) -> None:
        """Address to answer the memcached text protocol on, relayed upstream (repeatable)."""
        self["memcache-listen"].append(checked(addr, "--memcache-listen"))

    def opt_server(self, addrs: str) -> None:
        """Address of dc_server (required); repeated, or ADDR,ADDR,..., for servers to fail
        over to, in order of preference."""
        for addr in addrs.split(","):
            if not addr.strip():
                raise usage.UsageError(f"--server: empty address in {addrs!r}")
            self["servers"].append(checked_address("server", addr.strip()))

    def opt_connect(self, addrs: str) -> None:
        """Same as --server."""
        self.opt_server(addrs)

    def postOptions(self) -> None:
        if not self["servers"]:
            raise usage.UsageError("--server ADDR is required")
        self["server"] = self["servers"][0]
        checked_address("listen", self["listen"])
        self["retry"] = positive_int("retry", self["retry"])
        self["idle"] = positive_int("idle", self["idle"], minimum=0)
        if self["metrics"] is not None:
            checked_address("metrics", self["metrics"])
        self["ownership"] = self.ownership()
        self["limits"] = self.limits()


class LinkService(Service):
    """Starts the server link's attempts with the service and closes the link with it."""

    def __init__(self, link: ServerLink, endpoints):
        self.link = link
        self.endpoints = endpoints

    def startService(self) -> None:
        super().startService()
        self.link.start(self.endpoints)

    def stopService(self):
        super().stopService()
        return self.link.stop()


class ClientProxyService(ConfiguredService):
    """dc_client as a service; holds only plain configuration until it starts."""

    program = "dc_client"

    log = Logger()
    runtime = ("link", "relay")

    def __init__(self, listen: str, server, retry_ms: int = 5000, idle_ms: int = 0,
                 ownership: SocketOwnership = SocketOwnership(), reactor=None,
                 memcache_listen=(), metrics: Optional[str] = None,
                 limits: ConnectionLimits = Options.default_limits):
        """``server`` is one address or a sequence of them, in order of preference."""
        super().__init__(reactor)
        self.listen = listen
        self.servers = [server] if isinstance(server, str) else list(server)
        self.server = self.servers[0]
        self.retry_ms = retry_ms
        self.idle_ms = idle_ms
        self.ownership = ownership
        self.memcache_listen = list(memcache_listen)
        self.metrics = metrics
        self.limits = limits
        self.link: Optional[ServerLink] = None
        self.relay: Optional[RelayStore] = None

    def __setstate__(self, state):
        state = dict(state)  # settings added since a tap was written take their defaults
        state.setdefault("memcache_listen", [])
        state.setdefault("metrics", None)
        state.setdefault("servers", [state.get("server")])
        state.setdefault("limits", Options.default_limits)
        super().__setstate__(state)

    def build(self, reactor) -> None:
        self.link = ServerLink(clock=reactor, servers=self.servers,
                               retry=self.retry_ms / 1000.0)
        local = LocalFactory(self.link, clock=reactor, idle=self.idle_ms / 1000.0)
        Listener(self.listen, local, self.ownership, reactor,
                 self.limits).setServiceParent(self)
        self.relay = RelayStore(self.link)
        memcache = MemcacheFactory(self.relay, reactor, relay_stats(self.link, self.relay))
        self.relay.front = memcache
        for addr in self.memcache_listen:
            Listener(addr, memcache, self.ownership, reactor,
                     self.limits).setServiceParent(self)
        if self.metrics is not None:
            registry = registry_of(ClientCollector(self.link, self.relay, memcache))
            metrics_listener(self.metrics, registry, self.ownership,
                             reactor).setServiceParent(self)
        endpoints = [address.client_endpoint(reactor, address.parse(server))
                     for server in self.servers]
        LinkService(self.link, endpoints).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.log.info("dc_client started: {listen} -> {server}, retry every {retry} ms",
                      listen=self.listen, server=", then ".join(self.servers),
                      retry=self.retry_ms)


def makeService(options) -> ClientProxyService:
    return ClientProxyService(options["listen"], options["servers"], options["retry"],
                              options["idle"], options["ownership"],
                              memcache_listen=options["memcache-listen"],
                              metrics=options["metrics"], limits=options["limits"])
