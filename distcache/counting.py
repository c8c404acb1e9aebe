"""Plain counters of what a cache does, kept on the hot path as integers.

They are read by the memcached ``stats`` reply and by the Prometheus collectors in
:mod:`distcache.metrics`; nothing here formats or exports them.
"""

from __future__ import annotations

from typing import Dict

from twisted.internet import defer
from zope.interface import implementer

from distcache import wire
from distcache.store import ISessionStore

STORE_OPS = ("add", "get", "remove", "have")
_PLAIN = frozenset((bytes, int, type(None)))  # answers that are not Deferreds, by exact type


class StoreCounters:
    """Operations on a session store and their outcomes, whichever protocol asked."""

    def __init__(self):
        self.operations: Dict[str, int] = dict.fromkeys(STORE_OPS, 0)
        self.get_hits = 0
        self.get_misses = 0
        self.add_results: Dict[str, int] = {}
        self.protocol_errors = 0

    def added(self, result: int) -> int:
        name = wire.RESULT_NAMES.get(result, str(result))
        self.add_results[name] = self.add_results.get(name, 0) + 1
        return result

    def got(self, data):
        if data is None:
            self.get_misses += 1
        else:
            self.get_hits += 1
        return data


@implementer(ISessionStore)
class CountingStore:
    """An :class:`ISessionStore` that counts what passes through it to another one."""

    def __init__(self, store, counters: StoreCounters):
        self.store = store
        self.counters = counters

    def __len__(self) -> int:
        return len(self.store)

    def add(self, session_id, data, timeout_ms):
        counters = self.counters
        counters.operations["add"] += 1
        result = self.store.add(session_id, data, timeout_ms)
        if type(result) not in _PLAIN and isinstance(result, defer.Deferred):
            return result.addCallback(counters.added)
        return counters.added(result)

    def get(self, session_id):
        counters = self.counters
        counters.operations["get"] += 1
        result = self.store.get(session_id)
        if result is None:
            counters.get_misses += 1
        elif type(result) is bytes:
            counters.get_hits += 1
        elif isinstance(result, defer.Deferred):
            return result.addCallback(counters.got)
        else:
            return counters.got(result)
        return result

    def remove(self, session_id):
        self.counters.operations["remove"] += 1
        return self.store.remove(session_id)

    def have(self, session_id):
        self.counters.operations["have"] += 1
        return self.store.have(session_id)

    def clear(self):
        return self.store.clear()

    def __getattr__(self, name):
        if name == "store":
            raise AttributeError(name)
        # evictions, expirations, bytes, max_sessions... of the store underneath
        return getattr(self.store, name)
