"""twistd dcap-door: options in, a door service out.

The service keeps only plain configuration and opens the namespace, pool
and listening endpoint when it starts, so it can be pickled into a tap file.
"""

import os

from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from distcache import address
from distcache.version import opt_version
from distcache.configured import ConfiguredService
from distcache.listening import Listener
from distcache.metrics import DoorCollector, metrics_listener, registry_of
from distcache.dcap.door import DoorFactory, host_port
from distcache.dcap.doorconfig import DEFAULT_SHUTDOWN_GRACE, DoorConfig, parse_version_range
from distcache.dcap.doorpolicy import policy_summary, port_warning
from distcache.dcap.namespace import Access
from distcache.dcap.policy_options import PolicyOptions, policy_from_options
from distcache.dcap.stateroot import default_root
from distcache.dcap.transferlog import TransferLog
from distcache.dcap.auth import PasswordFile, PasswordFileError
from distcache.dcap.tunnel import tls_options
from distcache.mtls import CredentialsError

log = Logger()

DEFAULT_LISTEN = "tcp:22125"


class Options(PolicyOptions):
    """Command line of `twistd dcap-door` (policy options: see PolicyOptions)."""

    program = "dcap-door"
    opt_version = opt_version

    synopsis = "[options]"
    longdesc = ("Run a DCAP door and mover that dccp and libdcap clients use unchanged. "
                "The namespace and the pool's data live under --root.")

    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Address the door listens on: a Twisted endpoint string "
                                      "(tcp:22125) or IP:host:port."],
        ["root", "r", None, "State directory: namespace database and pool data "
                            "(default: $DCAP_ROOT, else var/dcap)."],
        ["anonymous-access", None, "READONLY", "What unauthenticated clients may do: NONE, READONLY or FULL."],
        ["connect-host", None, None, "Host name or address the door tells clients to connect to for data "
                                     "(for NAT); default: the address the client reached the door on."],
        ["client-version", None, None, "Accepted client versions, min[:max], e.g. 2.47:2.47.99; "
                                       "other clients are disconnected after hello."],
        ["tls-cert", None, None, "PEM certificate (chain and key may follow): TLS on every control "
                                 "connection, as dcap's ssl tunnel speaks it."],
        ["tls-key", None, None, "PEM private key of --tls-cert (default: the --tls-cert file)."],
        ["passwd", None, None, "Password file (user:hash:uid:gid, see dcap-admin passwd) for logins "
                               "through the ssl tunnel; needs TLS (--tls-cert or an ssl: --listen)."],
        ["shutdown-grace", None, DEFAULT_SHUTDOWN_GRACE,
         "Seconds a stopping door (SIGTERM) lets running transfers finish before it tells the "
         "clients still connected that it shuts down.", float],
        ["metrics", None, None, "Serve Prometheus metrics over HTTP at /metrics on ADDR "
                                "(any listening address form)."],
        ["transfer-log", None, None, "Append one JSON line per finished transfer to FILE "
                                     "(reopened when logrotate moves it)."],
    ]
    optFlags = [
        ["allow-truncate", None, "Let clients overwrite existing files (the client's -truncate)."],
        ["connect-back", None, "Unless a client asks for passive mode, the mover connects to the "
                               "client's callback port (classic DCAP) instead of replying `connect`."],
        ["no-fsync", None, "Do not fsync written files before they become visible (faster, less safe)."],
    ]

    def postOptions(self):
        if self["root"] is None:
            self["root"] = default_root()
        try:
            address.parse(self["listen"])
        except address.AddressError as e:
            raise usage.UsageError(f"--listen: {e}")
        try:
            Access(self["anonymous-access"].upper())
        except ValueError:
            raise usage.UsageError("--anonymous-access must be NONE, READONLY or FULL")
        if self["client-version"]:
            try:
                parse_version_range(self["client-version"])
            except ValueError:
                raise usage.UsageError("--client-version must look like 2.47[:2.47.99]")
        if self["metrics"] is not None:
            try:
                address.parse(self["metrics"])
            except address.AddressError as e:
                raise usage.UsageError(f"--metrics: {e}")
        if self["transfer-log"] is not None:
            self["transfer-log"] = os.path.abspath(self["transfer-log"])
        if self["shutdown-grace"] < 0:
            raise usage.UsageError("--shutdown-grace must not be negative")
        self._check_tls()
        self["policy"] = policy_from_options(self)


    def _check_tls(self):
        """TLS and passwords make sense together: refuse what cannot work at start-up."""
        ssl_listen = self["listen"].split(":", 1)[0] in ("ssl", "tls")
        if self["tls-key"] and not self["tls-cert"]:
            raise usage.UsageError("--tls-key needs --tls-cert")
        if self["tls-cert"]:
            if ssl_listen:
                raise usage.UsageError("--tls-cert with an ssl: --listen address would wrap TLS "
                                       "twice; give the certificate in one place")
            try:
                tls_options(self["tls-cert"], self["tls-key"])
            except CredentialsError as e:
                raise usage.UsageError("--tls-cert: %s" % (e,))
        if self["passwd"]:
            if not (self["tls-cert"] or ssl_listen):
                raise usage.UsageError("--passwd needs TLS (--tls-cert, or an ssl: --listen "
                                       "address): passwords never cross the network in clear")
            try:
                PasswordFile(self["passwd"]).lines()
            except PasswordFileError as e:
                raise usage.UsageError("--passwd: %s" % (e,))


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
        shutdown_grace=float(options["shutdown-grace"]),
        passwd=os.path.abspath(options["passwd"]) if options["passwd"] else None,
        tls_cert=os.path.abspath(options["tls-cert"]) if options["tls-cert"] else None,
        tls_key=os.path.abspath(options["tls-key"] or options["tls-cert"])
        if options["tls-cert"] else None,
    )


class DoorService(ConfiguredService):
    """Opens storage and the listening endpoint on start; pickles as config."""

    program = "dcap-door"

    runtime = ("pool", "factory", "workers")

    def __init__(self, listen, root, config, fsync=True, policy=None, reactor=None,
                 metrics=None, transfer_log=None):
        super().__init__(reactor)
        self.metrics = metrics
        self.transfer_log = transfer_log
        self.listen = listen
        self.root = root
        self.config = config
        self.fsync = fsync
        self.policy = policy
        self.pool = None
        self.factory = None
        self.workers = None

    def __setstate__(self, state):
        state = dict(state)  # settings added since a tap was written take their defaults
        state.setdefault("metrics", None)
        state.setdefault("transfer_log", None)
        super().__setstate__(state)

    @property
    def port(self):
        """The listening port while running (None otherwise)."""
        for child in self:
            if isinstance(child, Listener):
                return child.port
        return None

    def make_factory(self, reactor):
        from distcache.dcap import hsm
        from distcache.dcap.pool import DEFAULT_POOL_NAME, open_pool
        from distcache.dcap.workers import INLINE, ThreadWorkers
        root = os.path.abspath(self.root)
        # Not a child service: the threads must outlive the listeners and the sessions'
        # grace, so stopService stops them itself, after the sessions are gone.  A
        # reactor without threads (a test's memory reactor) gets storage work inline.
        self.workers = ThreadWorkers(reactor) if IReactorThreads.providedBy(reactor) else None
        from distcache.dcap import space
        settings = (self.policy.space_for(DEFAULT_POOL_NAME) if self.policy is not None
                    else space.SpaceSettings())
        self.pool = open_pool(root, hsm=hsm.load_config(root, reactor), fsync=self.fsync,
                              workers=self.workers or INLINE, clock=reactor, space=settings)
        space.save_settings(root, settings)  # what dcap-admin space compares use against
        self.factory = DoorFactory(self.pool, self.config, reactor, policy=self.policy)
        if self.transfer_log is not None:
            self.factory.transfer_log = TransferLog(self.transfer_log)
        return self.factory

    def build(self, reactor):
        factory = self.make_factory(reactor)
        if self.config.tls_cert:
            factory = TLSMemoryBIOFactory(tls_options(self.config.tls_cert, self.config.tls_key),
                                          False, factory)
            factory.noisy = False
        Listener(self.listen, factory, reactor=reactor).setServiceParent(self)
        if self.metrics is not None:
            metrics_listener(self.metrics, registry_of(DoorCollector(self.factory)),
                             reactor=reactor).setServiceParent(self)

    def startService(self):
        self._ensure_built()
        if self.workers is not None and not self.workers.running:
            self.workers.startService()
        super().startService()
        self.factory.policy.start()
        self.pool.start_management()
        host = self.port.getHost()
        log.info("DCAP door listening on {address}, root {root}", address=host_port(host),
                 root=os.path.abspath(self.root))
        if self.config.tls_cert or self.config.passwd:
            log.info("DCAP door control connections: {tls}; logins: {logins}",
                     tls="TLS with " + self.config.tls_cert if self.config.tls_cert
                     else "TLS from the listening address",
                     logins=("accounts in " + self.config.passwd) if self.config.passwd
                     else "none (every client is anonymous)")
        warning = port_warning(getattr(host, "port", None))
        if warning:
            log.warn("{warning}", warning=warning)
        if self.pool.space.manages_space or self.pool.flusher.active:
            log.info("DCAP pool {name}: {space}", name=self.pool.name,
                     space=self.pool.space.describe())
        listeners = [child for child in self if isinstance(child, Listener)]
        if self.metrics is not None and len(listeners) > 1:
            log.info("DCAP door metrics at http://{address}/metrics",
                     address=host_port(listeners[1].port.getHost()))
        if self.transfer_log is not None:
            log.info("DCAP door transfer log {path}", path=self.transfer_log)
        # The policy line comes last: it says start-up is complete.
        log.info("DCAP door policy: {summary}",
                 summary=policy_summary(self.policy, self.config.access,
                                        self.config.allow_truncate))

    def stopService(self):
        """Stop gently: listeners first, then sessions (within the grace), then storage.

        The namespace closes only once every control connection is gone, so
        a session still running during the grace can still stat and commit; the
        storage worker threads, which are not a child service for that reason,
        stop after the sessions and before the namespace closes.
        """
        factory, pool, workers = self.factory, self.pool, self.workers
        d = super().stopService()
        if factory is not None:
            d.addCallback(lambda _: factory.drain(factory.config.shutdown_grace))

        if pool is not None:
            pool.stop_management()

        def closed(_):
            if factory is not None:
                factory.policy.stop()
            stopping = workers.stopService() if workers is not None and workers.running else None
            if pool is not None:
                pool.engine.close()  # the database worker has finished its queue
            if factory is not None and factory.transfer_log is not None:
                factory.transfer_log.close()
            for child in list(self):
                child.disownServiceParent()
            if self.factory is factory:
                self.factory = self.pool = self.workers = None
                self.built = False
            log.info("DCAP door stopped")
            return stopping

        d.addCallback(closed)
        return d


def makeService(options):
    return DoorService(options["listen"], options["root"], door_config(options),
                       fsync=not options["no-fsync"], policy=options.get("policy"),
                       metrics=options["metrics"], transfer_log=options["transfer-log"])
