"""``twistd dc_snoop``: options and the service tree of the decoding proxy."""

from __future__ import annotations

from typing import Optional

from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from distcache import address
from distcache.client_tap import checked_address
from distcache.listening import Listener, SocketOwnership
from distcache.server_tap import SocketOptions
from distcache.snoop import SnoopFactory


class Options(SocketOptions):
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


class SnoopService(MultiService):
    """dc_snoop as a service; holds only plain configuration until it starts."""

    log = Logger()

    def __init__(self, listen: str, server: str, ownership: SocketOwnership = SocketOwnership(),
                 reactor=None, report=None):
        super().__init__()
        self.listen = listen
        self.server = server
        self.ownership = ownership
        self._reactor = reactor
        self._report = report
        self.factory: Optional[SnoopFactory] = None

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_reactor", None)
        state.pop("_report", None)
        state["factory"] = None
        state["services"] = []
        state["namedServices"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reactor = None
        self._report = None

    def _build(self) -> None:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        endpoint = address.client_endpoint(reactor, address.parse(self.server))
        self.factory = SnoopFactory(endpoint, clock=reactor, report=self._report)
        Listener(self.listen, self.factory, self.ownership, reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        if self.factory is None:
            self._build()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.factory is None:
            self._build()
        super().startService()
        self.log.info("dc_snoop started: {listen} -> {server}", listen=self.listen,
                      server=self.server)


def makeService(options) -> SnoopService:
    return SnoopService(options["listen"], options["server"], options["ownership"])
