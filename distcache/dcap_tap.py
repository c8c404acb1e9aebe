"""twistd dcap-door: options in, a door service out.

The service keeps only plain configuration and opens the namespace, pool
and listening endpoint when it starts, so it can be pickled into a tap file.
"""

import os
import socket

from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from distcache import address
from distcache.address import address_text
from distcache.version import opt_version
from distcache.configured import ConfiguredService
from distcache.listening import ConnectionLimits, Listener, parse_limit
from distcache.startup import StartupError
from distcache.metrics import DoorCollector, metrics_listener, registry_of
from distcache.dcap.door import DoorFactory
from distcache.dcap.doorconfig import (
    DEFAULT_MAX_LOGINS, DEFAULT_MAX_LOGINS_PER_PEER, DEFAULT_MAX_WAITING_OPENS,
    DEFAULT_SHUTDOWN_GRACE, DoorConfig, parse_size,
    parse_version_range,
)
from distcache.dcap.ioqueue import parse_queue
from distcache.dcap.doorpolicy import policy_summary, port_warning
from distcache.dcap.namespace import Access
from distcache.dcap.policy_options import PolicyOptions, policy_from_options
from distcache.dcap.stateroot import default_root, unwritable_state
from distcache.dcap.trust import NetworkListError, parse_networks
from distcache.dcap.transferlog import TransferLog
from distcache.dcap.auth import PasswordFile, PasswordFileError
from distcache.dcap.tunnel import tls_options
from distcache.mtls import CredentialsError

log = Logger()

DEFAULT_LISTEN = "tcp:22125"
#: The name of the door's one pool (policies and poollists name pools).
POOL_NAME = "pool1"


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
        ["namespace", None, None, "The namespace: sqlite (the file under --root, the default) or a "
                                  "postgresql:// URL that several door+pool nodes share."],
        ["pool-name", None, "pool1", "This node's pool name; nodes sharing a PostgreSQL namespace "
                                     "need different names."],
        ["anonymous-access", None, "READONLY", "What unauthenticated clients may do: NONE, READONLY or FULL."],
        ["connect-host", None, None, "Host name or address the door tells clients to connect to for data "
                                     "(for NAT); default: the address the client reached the door on."],
        ["client-version", None, None, "Accepted client versions, min[:max], e.g. 2.47:2.47.99; "
                                       "other clients are disconnected after hello."],
        ["trust-client-uid", None, None,
         "CIDR[,CIDR...]: networks whose clients' -uid/-gid are believed (as NFS believes "
         "AUTH_SYS); every other client is the anonymous user, checked against the "
         "\"other\" permission bits."],
        ["allowed-subnets", None, None,
         "CIDR[,CIDR...]: only peers in these networks may connect; others are refused "
         "at connect (default: any peer)."],
        ["max-logins", None, DEFAULT_MAX_LOGINS,
         "Control connections the door holds at once (dCache's -maxLogin); more are closed "
         "as they connect, logged once until the door is under the limit again (0: no limit)."],
        ["max-logins-per-peer", None, DEFAULT_MAX_LOGINS_PER_PEER,
         "Control connections the door holds at once from one IP address (0: no limit)."],
        ["max-waiting-opens", None, DEFAULT_MAX_WAITING_OPENS,
         "Opens one control connection may have waiting for their data connection; more "
         "are refused (each holds an open file until its client connects).", int],
        ["max-file-size", None, None,
         "Largest file a client may write, in bytes or with K, M, G or T (10G); a write "
         "announcing more (-alloc-size) is refused with ENOSPC (default: no limit)."],
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
        ["allow-truncate", None, "Let clients overwrite existing files (the client's -truncate "
                                 "or -overwrite)."],
        ["allow-access-latency", None, "Record a new file's access latency as its client asks "
                                       "(-access-latency=ONLINE|NEARLINE)."],
        ["allow-retention-policy", None, "Record a new file's retention policy as its client asks "
                                         "(-retention-policy=CUSTODIAL|REPLICA|OUTPUT)."],
        ["connect-back", None, "Unless a client asks for passive mode, the mover connects to the "
                               "client's callback port (classic DCAP) instead of replying `connect`."],
        ["no-fsync", None, "Do not fsync written files before they become visible (faster, less safe)."],
    ]

    def __init__(self):
        super().__init__()
        self["io-queue"] = []

    def opt_io_queue(self, text):
        """NAME=LIMIT: a mover queue that runs at most LIMIT movers at once; opens naming
        it (-io-queue=NAME) wait there. Repeat for more queues."""
        try:
            name, limit = parse_queue(text)
        except ValueError as e:
            raise usage.UsageError("--io-queue: %s" % (e,))
        self["io-queue"] = [q for q in self["io-queue"] if q[0] != name] + [(name, limit)]

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
        from distcache.dcap.engines import check_spec
        try:
            check_spec(self["namespace"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        if self["client-version"]:
            try:
                parse_version_range(self["client-version"])
            except ValueError:
                raise usage.UsageError("--client-version must look like 2.47[:2.47.99]")
        for name in ("trust-client-uid", "allowed-subnets"):
            if self[name] is not None:
                try:
                    parse_networks(self[name])
                except NetworkListError as e:
                    raise usage.UsageError("--%s: %s" % (name, e))
        if self["max-file-size"] is not None:
            try:
                parse_size(self["max-file-size"])
            except ValueError as e:
                raise usage.UsageError("--max-file-size: %s" % (e,))
        for name in ("max-logins", "max-logins-per-peer"):
            self[name] = parse_limit(name, self[name])
        if self["max-waiting-opens"] < 1:
            raise usage.UsageError("--max-waiting-opens must be at least 1")
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
        allow_access_latency=bool(options.get("allow-access-latency")),
        allow_retention_policy=bool(options.get("allow-retention-policy")),
        io_queues=tuple(options.get("io-queue") or ()),
        connect_back=bool(options["connect-back"]),
        connect_host=options["connect-host"],
        client_version_min=low,
        client_version_max=high,
        shutdown_grace=float(options["shutdown-grace"]),
        trust_client_uid=_networks(options.get("trust-client-uid")),
        allowed_subnets=_networks(options.get("allowed-subnets")),
        max_waiting_opens=int(options.get("max-waiting-opens", DEFAULT_MAX_WAITING_OPENS)),
        max_logins=int(options.get("max-logins", DEFAULT_MAX_LOGINS)),
        max_logins_per_peer=int(options.get("max-logins-per-peer", DEFAULT_MAX_LOGINS_PER_PEER)),
        max_file_size=parse_size(options["max-file-size"]) if options.get("max-file-size")
        else None,
        passwd=os.path.abspath(options["passwd"]) if options["passwd"] else None,
        tls_cert=os.path.abspath(options["tls-cert"]) if options["tls-cert"] else None,
        tls_key=os.path.abspath(options["tls-key"] or options["tls-cert"])
        if options["tls-cert"] else None,
    )


def login_limits(config) -> ConnectionLimits:
    """The door's --max-logins and --max-logins-per-peer as listener limits."""
    return ConnectionLimits(config.max_logins, config.max_logins_per_peer,
                            option="max-logins", per_peer_option="max-logins-per-peer")


def _networks(text):
    return parse_networks(text) if text else ()


class DoorService(ConfiguredService):
    """Opens storage and the listening endpoint on start; pickles as config."""

    program = "dcap-door"

    runtime = ("pool", "factory", "workers", "cluster")

    def __init__(self, listen, root, config, fsync=True, policy=None, reactor=None,
                 metrics=None, transfer_log=None, namespace=None, pool_name="pool1"):
        super().__init__(reactor)
        self.metrics = metrics
        self.transfer_log = transfer_log
        self.namespace = namespace
        self.pool_name = pool_name
        self.cluster = None
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
        state.setdefault("namespace", None)
        state.setdefault("pool_name", "pool1")
        state.setdefault("cluster", None)
        super().__setstate__(state)

    @property
    def port(self):
        """The listening port while running (None otherwise)."""
        for child in self:
            if isinstance(child, Listener):
                return child.port
        return None

    def make_factory(self, reactor):
        """The door's factory; its storage is attached when the service starts."""
        self.factory = DoorFactory(None, self.config, reactor, policy=self.policy,
                                   pool_name=self.pool_name)
        return self.factory

    def open_storage(self, reactor):
        """Open (or create) the namespace and pool as the user the door runs as.

        This runs in startService, after twistd's --uid/--gid (or a tac file's
        Application(uid=, gid=)) has dropped privileges, so a new state directory
        belongs to that user; one it could not write refuses the start.
        """
        from distcache.dcap import hsm
        from distcache.dcap.pool import open_pool
        from distcache.dcap.workers import INLINE, ThreadWorkers
        root = os.path.abspath(self.root)
        why = unwritable_state(root)
        if why is not None:
            raise StartupError(why)
        # Not a child service: the threads must outlive the listeners and the sessions'
        # grace, so stopService stops them itself, after the sessions are gone.  A
        # reactor without threads (a test's memory reactor) gets storage work inline.
        self.workers = ThreadWorkers(reactor) if IReactorThreads.providedBy(reactor) else None
        from distcache.dcap import space
        settings = (self.policy.space_for(self.pool_name) if self.policy is not None
                    else space.SpaceSettings())
        self.pool = open_pool(root, hsm=hsm.load_config(root, reactor), fsync=self.fsync,
                              workers=self.workers or INLINE, clock=reactor, space=settings,
                              namespace=self.namespace, name=self.pool_name)
        space.save_settings(root, settings)  # what dcap-admin space compares use against
        self.pool.sweep_orphans()  # before any client can start a write
        self.factory.attach(self.pool)
        if self.transfer_log is not None:
            self.factory.transfer_log = TransferLog(self.transfer_log)

    def _join_cluster(self, reactor):
        """With a PostgreSQL namespace: register the pool and serve other doors' opens."""
        from distcache.dcap.engines import is_postgres
        if not is_postgres(self.namespace) or self.workers is None:
            return
        from distcache.dcap.cluster import Cluster
        address = self.port.getHost()
        host = self.config.connect_host or (
            address.host if address.host not in ("0.0.0.0", "::") else socket.getfqdn())
        self.cluster = Cluster(self.namespace, self.pool, self.factory, self.workers, reactor,
                               host, address.port)
        self.factory.cluster = self.cluster
        self.cluster.start()

    def build(self, reactor):
        factory = self.make_factory(reactor)
        if self.config.tls_cert:
            factory = TLSMemoryBIOFactory(tls_options(self.config.tls_cert, self.config.tls_key),
                                          False, factory)
            factory.noisy = False
        Listener(self.listen, factory, reactor=reactor,
                 limits=login_limits(self.config)).setServiceParent(self)
        if self.metrics is not None:
            metrics_listener(self.metrics, registry_of(DoorCollector(self.factory)),
                             reactor=reactor).setServiceParent(self)

    def startService(self):
        self._ensure_built()
        if self.pool is None:
            self._starting(lambda: self.open_storage(self.reactor))
        if self.workers is not None and not self.workers.running:
            self.workers.startService()
        super().startService()
        self.factory.policy.start()
        self.pool.start_management()
        self._join_cluster(self.reactor)
        host = self.port.getHost()
        log.info("DCAP door listening on {address}, root {root}", address=address_text(host),
                 root=os.path.abspath(self.root))
        log.info("DCAP door clients: {trust}{allowed}",
                 trust=("uid/gid believed from " + ", ".join(self.config.trust_client_uid)
                        + ", anonymous elsewhere") if self.config.trust_client_uid
                 else "all anonymous (no --trust-client-uid)",
                 allowed=("; connections only from " + ", ".join(self.config.allowed_subnets))
                 if self.config.allowed_subnets else "")
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
                     address=address_text(listeners[1].port.getHost()))
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
        factory, pool, workers, cluster = self.factory, self.pool, self.workers, self.cluster
        d = super().stopService()
        if factory is not None:
            d.addCallback(lambda _: factory.drain(factory.config.shutdown_grace))

        if pool is not None:
            pool.stop_management()

        def closed(_):
            if factory is not None:
                factory.policy.stop()
                factory.warnings.stop()
            if cluster is not None:
                cluster.stop()
            stopping = workers.stopService() if workers is not None and workers.running else None
            if pool is not None:
                pool.engine.close()  # the database worker has finished its queue
            if factory is not None and factory.transfer_log is not None:
                factory.transfer_log.close()
            for child in list(self):
                child.disownServiceParent()
            if self.factory is factory:
                self.factory = self.pool = self.workers = self.cluster = None
                self.built = False
            log.info("DCAP door stopped")
            return stopping

        d.addCallback(closed)
        return d


def makeService(options):
    return DoorService(options["listen"], options["root"], door_config(options),
                       fsync=not options["no-fsync"], policy=options.get("policy"),
                       metrics=options["metrics"], transfer_log=options["transfer-log"],
                       namespace=options["namespace"], pool_name=options["pool-name"])
