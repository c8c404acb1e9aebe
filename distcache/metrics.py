"""Prometheus metrics for the distcache tools, served over HTTP at ``/metrics``.

The tools keep plain integer counters on their hot paths (:mod:`distcache.counting`,
the proxy's link, the memcache factories, the door's :mod:`distcache.dcap.accounting`);
the collectors here read them when Prometheus scrapes, through ``prometheus_client``'s
metric families and its Twisted resource, so nothing is formatted by hand and nothing
is paid per request.
Each service has its own registry, so several can run in one process.
"""

from __future__ import annotations

from typing import Iterable, Optional

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from distcache.listening import ConnectionLimits, Listener, SocketOwnership

MEMCACHE_COMMANDS = ("cmd_get", "cmd_set", "cmd_touch", "cmd_flush")


def _counter(name, doc, value, labels=None, label_values=None):
    family = CounterMetricFamily(name, doc, labels=labels)
    if labels:
        family.add_metric(label_values, value)
    else:
        family.add_metric([], value)
    return family


def _gauge(name, doc, value):
    return GaugeMetricFamily(name, doc, value=value)


def _memcache_families(prefix: str, memcache) -> Iterable:
    if memcache is None:
        return
    commands = CounterMetricFamily(f"{prefix}_memcache_commands_total",
                                   "memcache commands, by memcached's stats name",
                                   labels=["command"])
    for name in MEMCACHE_COMMANDS:
        commands.add_metric([name[4:]], getattr(memcache.counters, name))
    yield commands


class ServerCollector:
    """dc_server's counters: its store, its connections, both protocols."""

    def __init__(self, factory, store, counters, memcache=None):
        self.factory = factory
        self.store = store          # the SessionStore itself, for its own counters
        self.counters = counters    # StoreCounters
        self.memcache = memcache    # MemcacheFactory or None

    def collect(self):
        c = self.counters
        ops = CounterMetricFamily("distcache_operations", "Session store operations",
                                  labels=["op"])
        for op, n in c.operations.items():
            ops.add_metric([op], n)
        yield ops
        yield _counter("distcache_get_hits", "Lookups that found a session", c.get_hits)
        yield _counter("distcache_get_misses", "Lookups that found nothing", c.get_misses)
        adds = CounterMetricFamily("distcache_add", "ADDs by result", labels=["result"])
        for result, n in sorted(c.add_results.items()):
            adds.add_metric([result], n)
        yield adds
        store = self.store
        # A shared store (Redis) evicts and expires inside the engine and does not
        # count bytes here: what it cannot know is left out rather than shown as 0.
        if hasattr(store, "evictions"):
            yield _counter("distcache_evictions", "Live sessions dropped to make room",
                           store.evictions)
        if hasattr(store, "expirations"):
            yield _counter("distcache_expirations", "Sessions dropped on expiry",
                           store.expirations)
        yield _gauge("distcache_sessions", "Sessions held", len(store))
        if hasattr(store, "bytes"):
            yield _gauge("distcache_session_bytes", "Bytes of session data held", store.bytes)
        memcache = self.memcache
        conns = GaugeMetricFamily("distcache_connections", "Open client connections",
                                  labels=["protocol"])
        conns.add_metric(["distcache"], self.factory.connections)
        errors = CounterMetricFamily("distcache_protocol_errors",
                                     "Malformed requests (distcache: connection closed; "
                                     "memcache: answered with an error)", labels=["protocol"])
        errors.add_metric(["distcache"], self.factory.protocol_errors)
        if memcache is not None:
            conns.add_metric(["memcache"], memcache.counters.curr_connections)
            errors.add_metric(["memcache"], memcache.counters.protocol_errors)
        yield conns
        yield errors
        yield from _memcache_families("distcache", memcache)


class ClientCollector:
    """dc_client's counters: its local connections and its one server connection."""

    def __init__(self, link, relay=None, memcache=None):
        self.link = link
        self.relay = relay
        self.memcache = memcache

    def collect(self):
        link = self.link
        locals_ = GaugeMetricFamily("distcache_client_local_connections",
                                    "Open local client connections", labels=["protocol"])
        locals_.add_metric(["distcache"], len(link.locals))
        if self.memcache is not None:
            locals_.add_metric(["memcache"], self.memcache.counters.curr_connections)
        yield locals_
        relayed = link.forwarded + (self.relay.requests if self.relay is not None else 0)
        yield _counter("distcache_client_requests_relayed",
                       "Requests forwarded to the server", relayed)
        yield _counter("distcache_client_offline_answers",
                       "Requests answered at once because the server was unreachable",
                       link.answered_unreachable)
        yield _counter("distcache_client_disconnected_answers",
                       "Requests in flight when the server connection dropped",
                       link.answered_disconnected)
        yield _gauge("distcache_client_upstream_up", "1 while connected to the server",
                     int(link.connected))
        yield _counter("distcache_client_reconnects",
                       "Server connections made after the first", max(0, link.connects - 1))
        yield _gauge("distcache_client_requests_in_flight",
                     "Requests sent to the server and not yet answered", link.outstanding)
        yield from _memcache_families("distcache_client", self.memcache)


class DoorCollector:
    """The DCAP door's counters: opens, bytes, stage waits, open deadlines, checks."""

    #: open modes and results shown even before the first of each (rates need a start)
    MODES = ("r", "w", "rw")
    RESULTS = ("ok", "failed", "timeout", "interrupted", "client_gone", "door_stopping")
    PHASES = ("waiting", "reading", "writing")
    CHECKS = ("cached", "not_cached", "error")

    def __init__(self, factory):
        self.factory = factory

    def collect(self):
        factory = self.factory
        c = factory.counters
        opens = CounterMetricFamily("dcap_door_opens", "Opens ended, by mode and result",
                                    labels=["mode", "result"])
        seen = {(m, r): 0 for m in self.MODES for r in self.RESULTS}
        seen.update(c.opens)
        for (mode, result), n in sorted(seen.items()):
            opens.add_metric([mode, result], n)
        yield opens
        live = factory.open_sessions()
        moving = [s.transfer for s in live if s.transfer is not None]
        yield _counter("dcap_door_received_bytes", "Bytes written by clients (data connections)",
                       c.bytes_in + sum(t.bytes_in for t in moving))
        yield _counter("dcap_door_sent_bytes", "Bytes read by clients (data connections)",
                       c.bytes_out + sum(t.bytes_out for t in moving))
        yield _gauge("dcap_door_transfers_in_progress", "Opens not yet ended", len(live))
        yield _counter("dcap_door_stage_waits", "Reads that waited for a stage from tape",
                       c.stage_waits)
        yield _gauge("dcap_door_stage_waiting", "Reads waiting for a stage from tape now",
                     sum(1 for s in live if s.state() == "staging"))
        expired = factory.policy.timeouts.expired
        timeouts = CounterMetricFamily("dcap_door_open_timeouts",
                                       "openTimeout deadlines passed, by the open's phase",
                                       labels=["phase"])
        for phase in self.PHASES:
            timeouts.add_metric([phase], expired.get(phase, 0))
        yield timeouts
        checks = CounterMetricFamily("dcap_door_checks", "check requests, by answer",
                                     labels=["result"])
        for result in self.CHECKS:
            checks.add_metric([result], c.checks.get(result, 0))
        yield checks
        yield _gauge("dcap_door_connections", "Open control connections",
                     len(factory.connections))


def registry_of(*collectors) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)
    return registry


#: A scrape endpoint has a handful of callers (Prometheus servers, an operator's curl):
#: more connections than this are refused, so that a flood of them costs nothing more.
METRICS_LIMITS = ConnectionLimits(total=64, per_peer=16, option="metrics connection limit",
                                  per_peer_option="metrics per-peer connection limit")
#: A connection that sends nothing for this long is closed (a scrape takes milliseconds).
METRICS_IDLE_SECONDS = 60


def metrics_site(registry: CollectorRegistry):
    """An HTTP site answering ``/metrics`` in the Prometheus text format.

    The web modules are imported here, when a site is made: importing them
    installs the default reactor, which a tap module must not do (dc_server's
    Redis store installs the asyncio reactor in makeService).
    """
    from prometheus_client.twisted import MetricsResource
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    site = Site(root, timeout=METRICS_IDLE_SECONDS)
    site.noisy = False
    return site


def metrics_listener(addr: str, registry: CollectorRegistry,
                     ownership: Optional[SocketOwnership] = None, reactor=None) -> Listener:
    """The ``--metrics`` listener: its connections limited, idle ones closed."""
    return Listener(addr, metrics_site(registry), ownership or SocketOwnership(), reactor,
                    limits=METRICS_LIMITS)
