"""``twistd dc_snoop``: options and the service tree of the decoding proxy."""

from __future__ import annotations

from typing import Optional

from twisted.logger import Logger
from twisted.python import usage

from distcache import address
from distcache.version import opt_version
from distcache.configured import ConfiguredService
from distcache.client_tap import checked_address
from distcache.listening import ConnectionLimits, Listener, SocketOwnership
from distcache.server_tap import SocketOptions
from distcache.snoop import SnoopFactory


class Options(SocketOptions):

    program = "dc_snoop"
    opt_version = opt_version
    default_limits = ConnectionLimits(total=1024, per_peer=1024)
    synopsis = "--listen ADDR --server ADDR"
    longdesc = ("A transparent proxy between distcache peers that forwards every byte "
                "unchanged and logs one line per message.  ADDR is UNIX:/path, "
                "IP:host:port, IP:port, IPv6:[host]:port or a Twisted endpoint string.")

    optParameters = [
        ["listen", None, None, "Address the clients connect to (required)."],
        ["server", None, None, "Address of the real server or dc_client (required)."],
    ]

    def opt_connect(self, addr: str) -> None:
        """Same as --server."""
        self["server"] = addr

    def postOptions(self) -> None:
        for name in ("listen", "server"):
            if not self[name]:
                raise usage.UsageError(f"--{name} ADDR is required")
            checked_address(name, self[name])
        self["ownership"] = self.ownership()
        self["limits"] = self.limits()


class SnoopService(ConfiguredService):
    """dc_snoop as a service; holds only plain configuration until it starts."""

    program = "dc_snoop"

    log = Logger()
    runtime = ("factory", "_report")

    def __init__(self, listen: str, server: str, ownership: SocketOwnership = SocketOwnership(),
                 reactor=None, report=None, limits: ConnectionLimits = Options.default_limits):
        super().__init__(reactor)
        self.listen = listen
        self.server = server
        self.ownership = ownership
        self._report = report
        self.limits = limits
        self.factory: Optional[SnoopFactory] = None

    def __setstate__(self, state):
        state = dict(state)  # settings added since a tap was written take their defaults
        state.setdefault("limits", Options.default_limits)
        super().__setstate__(state)

    def build(self, reactor) -> None:
        endpoint = address.client_endpoint(reactor, address.parse(self.server))
        self.factory = SnoopFactory(endpoint, clock=reactor, report=self._report)
        Listener(self.listen, self.factory, self.ownership, reactor,
                 self.limits).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.log.info("dc_snoop started: {listen} -> {server}", listen=self.listen,
                      server=self.server)


def makeService(options) -> SnoopService:
    return SnoopService(options["listen"], options["server"], options["ownership"],
                        limits=options["limits"])
