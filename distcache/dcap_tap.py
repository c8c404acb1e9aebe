"""twistd dcap-door: options in, a door service out.

The service keeps only plain configuration and opens the namespace, pool
and listening endpoint when it starts, so it can be pickled into a tap file.
"""

import os

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from distcache.dcap.door import DoorConfig, DoorFactory, parse_version_range
from distcache.dcap.namespace import Access
from distcache.dcap.policy_options import PolicyOptions, policy_from_options

log = Logger()

DEFAULT_LISTEN = "tcp:22125"
DEFAULT_ROOT = os.path.join("var", "dcap")


class Options(PolicyOptions):
    """Command line of `twistd dcap-door` (policy options: see PolicyOptions)."""

    synopsis = "[options]"
    longdesc = ("Run a DCAP door and mover that dccp and libdcap clients use unchanged. "
                "The namespace and the pool's data live under --root.")

    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Endpoint the door listens on (Twisted endpoint string)."],
        ["root", "r", DEFAULT_ROOT, "State directory: namespace database and pool data."],
        ["anonymous-access", None, "READONLY", "What unauthenticated clients may do: NONE, READONLY or FULL."],
        ["connect-host", None, None, "Host name or address the door tells clients to connect to for data "
                                     "(for NAT); default: the address the client reached the door on."],
        ["client-version", None, None, "Accepted client versions, min[:max], e.g. 2.47:2.47.99; "
                                       "other clients are disconnected after hello."],
    ]
    optFlags = [
        ["allow-truncate", None, "Let clients overwrite existing files (the client's -truncate)."],
        ["connect-back", None, "Unless a client asks for passive mode, the mover connects to the "
                               "client's callback port (classic DCAP) instead of replying `connect`."],
        ["no-fsync", None, "Do not fsync written files before they become visible (faster, less safe)."],
    ]

    def postOptions(self):
        try:
            Access(self["anonymous-access"].upper())
        except ValueError:
            raise usage.UsageError("--anonymous-access must be NONE, READONLY or FULL")
        if self["client-version"]:
            try:
                parse_version_range(self["client-version"])
            except ValueError:
                raise usage.UsageError("--client-version must look like 2.47[:2.47.99]")
        self["policy"] = policy_from_options(self)


def door_config(options) -> DoorConfig:
    """The door's settings from parsed options (plain data)."""
    low, high = parse_version_range(options["client-version"] or "")
    return DoorConfig(
        access=Access(options["anonymous-access"].upper()),
        allow_truncate=bool(options["allow-truncate"]),
        connect_back=bool(options["connect-back"]),
        connect_host=options["connect-host"],
        client_version_min=low,
        client_version_max=high,
    )


class DoorService(service.Service):
    """Opens storage and the listening endpoint on start; pickles as config."""

    def __init__(self, listen, root, config, fsync=True, policy=None):
        self.listen = listen
        self.root = root
        self.config = config
        self.fsync = fsync
        self.policy = policy
        self.port = None
        self.pool = None
        self.factory = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["port"] = None
        state["pool"] = None
        state["factory"] = None
        return state

    def make_factory(self, reactor):
        from distcache.dcap import hsm
        from distcache.dcap.pool import open_pool
        root = os.path.abspath(self.root)
        self.pool = open_pool(root, hsm=hsm.load_config(root, reactor), fsync=self.fsync)
        self.factory = DoorFactory(self.pool, self.config, reactor, policy=self.policy)
        self.factory.policy.start()
        return self.factory

    def startService(self):
        from twisted.internet import reactor
        super().startService()
        factory = self.make_factory(reactor)
        endpoint = endpoints.serverFromString(reactor, self.listen)
        d = endpoint.listen(factory)

        def listening(port):
            self.port = port
            log.info("DCAP door listening on {address}, root {root}", address=port.getHost(),
                     root=os.path.abspath(self.root))
            return port

        def failed(f):
            log.failure("DCAP door cannot listen on {listen}", f, listen=self.listen)
            reactor.stop()

        d.addCallbacks(listening, failed)
        return d

    def stopService(self):
        super().stopService()
        if self.factory is not None:
            self.factory.policy.stop()
        if self.pool is not None:
            self.pool.namespace.close()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def makeService(options):
    return DoorService(options["listen"], options["root"], door_config(options),
                       fsync=not options["no-fsync"], policy=options.get("policy"))
