"""The memcached text protocol answered from a session store.

dc_server answers it from its own store; dc_client from a store that relays onto its
distcache upstream (:mod:`distcache.memcache_relay`).  Both sides share this module:
commands become session-store calls (a key is stored under :func:`memcache.store_id`),
and replies go out in request order whether the store answers at once or later.

``set`` is REMOVE then ADD, issued together so that later commands of the same
connection see their effect; ``touch`` is GET then REMOVE and ADD of the same data,
and the connection's later commands wait until it is done.  Neither is atomic against
other connections, which for session data (written once, read many times) is harmless.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Deque, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from distcache import memcache, wire
from distcache.address import address_text
from distcache.memcache import Command, Reject

VERSION = "1.6.0-distcache"

# Why a connection is not being read (a bit mask; reading resumes at zero).
_PAUSE_WRITE = 1      # the client is not reading its replies
_PAUSE_BACKLOG = 2    # too many replies are still waiting for the store
_PAUSE_TOUCH = 4      # a touch is in progress; later commands wait for it
_PAUSE_STORE = 8      # the store takes no more requests for now (dc_client's upstream is full)


class StoreUnavailable(Exception):
    """The store cannot answer now (dc_client's server is away)."""


class MemcacheCounters:
    """What the memcached ``stats`` reply counts beyond the store's own counters."""

    def __init__(self):
        self.cmd_get = 0
        self.cmd_set = 0
        self.cmd_touch = 0
        self.cmd_flush = 0
        self.delete_hits = 0
        self.delete_misses = 0
        self.touch_hits = 0
        self.touch_misses = 0
        self.curr_connections = 0
        self.total_connections = 0
        self.protocol_errors = 0


def _then(result, fn):
    """``fn(result)`` now, or when the Deferred ``result`` fires."""
    if isinstance(result, defer.Deferred):
        return result.addCallback(fn)
    return fn(result)


def _settled(result) -> None:
    """A store call whose answer is not needed (REMOVE before an ADD): drop its failure."""
    if isinstance(result, defer.Deferred):
        result.addErrback(lambda failure: None)


def _add_reply(result) -> bytes:
    if result == wire.OK:
        return memcache.STORED
    if result == wire.ERR_MATCHING_SESSION:
        return memcache.NOT_STORED
    name = wire.RESULT_NAMES.get(result, str(result))
    return memcache.server_error("distcache answered " + name)


@implementer(IPushProducer)
class MemcacheProtocol(Protocol):
    """One memcache client connection."""

    log = Logger()
    #: Replies waiting for the store beyond which the client is no longer read.
    max_outstanding = 128

    def __init__(self):
        self._decoder = memcache.Decoder()
        self._queue: Deque[list] = deque()   # [reply or Deferred] slots, in request order
        self._held: Deque = deque()           # events read while a touch is in progress
        self._paused = 0
        self._close_after = False
        self.gone = False

    # Connection.
    def connectionMade(self) -> None:
        counters = self.factory.counters
        counters.curr_connections += 1
        counters.total_connections += 1
        self.transport.registerProducer(self, True)
        factory = self.factory
        factory.connections.add(self)
        if factory.store_blocked:
            self._pause(_PAUSE_STORE)

    def connectionLost(self, reason) -> None:
        self.gone = True
        self.factory.counters.curr_connections -= 1
        self.factory.connections.discard(self)
        self._queue.clear()
        self._held.clear()

    def pauseProducing(self) -> None:
        self._pause(_PAUSE_WRITE)

    def resumeProducing(self) -> None:
        self._resume(_PAUSE_WRITE)

    def stopProducing(self) -> None:
        pass

    def _pause(self, reason: int) -> None:
        if not self._paused and not self.gone:
            self.transport.pauseProducing()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.gone:
                self.transport.resumeProducing()

    # Requests.
    def dataReceived(self, data: bytes) -> None:
        if self._decoder.closed:
            return
        events = self._decoder.feed(data)
        if self._held or self._paused & _PAUSE_TOUCH:
            self._held.extend(events)
        else:
            self._run(events)

    def _run(self, events) -> None:
        out: List[bytes] = []
        events = deque(events)
        while events:
            event = events.popleft()
            if isinstance(event, Reject):
                self.factory.counters.protocol_errors += 1
                if not event.noreply:
                    self._emit(event.reply, out)
                if event.close:
                    self.log.warn("closing memcache connection from {peer}: {reply}",
                                  peer=address_text(self.transport.getPeer()),
                                  reply=event.reply.strip().decode("ascii", "replace"))
                    self._finish(out)
                    return
                continue
            if event.name == b"quit":
                self._finish(out)
                return
            reply = self._command(event)
            if event.noreply:
                if isinstance(reply, defer.Deferred):
                    reply.addErrback(self._store_failed)
            else:
                self._emit(reply, out)
            if event.name == b"touch" and isinstance(reply, defer.Deferred):
                # Later commands must see the touch done: hold them until it is.
                self._held.extendleft(reversed(events))
                self._pause(_PAUSE_TOUCH)
                reply.addBoth(self._touched)
                break
        self._write(out)

    def _touched(self, result):
        self._resume(_PAUSE_TOUCH)
        if not self.gone:
            held, self._held = self._held, deque()
            self._run(held)
        return result

    def _finish(self, out: List[bytes]) -> None:
        """Close once every earlier reply is written."""
        self._close_after = True
        self._write(out)
        if not self._queue:
            self.transport.loseConnection()

    def _emit(self, reply, out: List[bytes]) -> None:
        if not self._queue:
            if not isinstance(reply, defer.Deferred):
                out.append(reply)
                return
            # A Deferred may fire at once and write its reply: what precedes it goes first.
            self._write(out)
            out.clear()
        slot = [reply]
        self._queue.append(slot)
        if isinstance(reply, defer.Deferred):
            reply.addErrback(self._store_failed).addCallback(self._resolved, slot)
            if len(self._queue) >= self.max_outstanding:
                self._pause(_PAUSE_BACKLOG)

    def _write(self, out: List[bytes]) -> None:
        if out and not self.gone:
            self.transport.write(b"".join(out))

    def _resolved(self, reply: bytes, slot: list) -> None:
        slot[0] = reply
        queue = self._queue
        out = []
        while queue and not isinstance(queue[0][0], defer.Deferred):
            out.append(queue.popleft()[0])
        self._write(out)
        if len(queue) <= self.max_outstanding // 2:
            self._resume(_PAUSE_BACKLOG)
        if not queue and self._close_after and not self.gone:
            self.transport.loseConnection()

    def _store_failed(self, failure: Failure) -> bytes:
        if failure.check(StoreUnavailable):
            return memcache.server_error(str(failure.value))
        self.log.failure("session store failed", failure)
        return memcache.server_error("session store failure")

    # Commands.
    def _command(self, command: Command):
        factory = self.factory
        store = factory.store
        counters = factory.counters
        name = command.name
        if name in (b"get", b"gets"):
            counters.cmd_get += len(command.keys)
            return self._get(store, command.keys, name == b"gets")
        if name in (b"set", b"add"):
            counters.cmd_set += 1
            sid = memcache.store_id(command.keys[0])
            ms = memcache.timeout_ms(command.exptime, factory.clock.seconds())
            if name == b"set":
                removed = store.remove(sid)
                if not ms:
                    return _then(removed, lambda _: memcache.STORED)
                _settled(removed)
                return _then(store.add(sid, command.data, ms), _add_reply)
            if not ms:
                return _then(store.have(sid),
                             lambda held: memcache.NOT_STORED if held else memcache.STORED)
            return _then(store.add(sid, command.data, ms), _add_reply)
        if name == b"delete":
            return _then(store.remove(memcache.store_id(command.keys[0])), self._deleted)
        if name == b"touch":
            counters.cmd_touch += 1
            sid = memcache.store_id(command.keys[0])
            ms = memcache.timeout_ms(command.exptime, factory.clock.seconds())
            return _then(store.get(sid), lambda data: self._touch(store, sid, data, ms))
        if name == b"version":
            return memcache.version(VERSION)
        if name == b"stats":
            if command.args:
                return memcache.ERROR
            return memcache.stats(factory.stats())
        if name == b"flush_all":
            counters.cmd_flush += 1
            if not factory.allow_flush:
                return memcache.FLUSH_DISABLED
            if command.exptime != 0:
                return memcache.FLUSH_DELAY
            if not hasattr(getattr(store, "store", store), "clear"):
                return memcache.server_error("flush_all is not offered for a shared store")
            try:
                cleared = store.clear()
            except StoreUnavailable as e:
                return memcache.server_error(str(e))
            self.log.info("flush_all from {peer}: {n} sessions forgotten",
                          peer=address_text(self.transport.getPeer()), n=cleared)
            return memcache.OK
        raise AssertionError(f"unhandled command {name!r}")  # the decoder makes no others

    def _get(self, store, keys, with_cas: bool):
        results = [store.get(memcache.store_id(k)) for k in keys]

        def reply(values) -> bytes:
            parts = []
            for key, data in zip(keys, values):
                if data is not None:
                    parts.append(memcache.value(key, data,
                                                memcache.cas_unique(data) if with_cas else None))
            parts.append(memcache.END)
            return b"".join(parts)

        if any(isinstance(r, defer.Deferred) for r in results):
            return defer.gatherResults([defer.maybeDeferred(lambda r=r: r) for r in results],
                                       consumeErrors=True).addErrback(
                lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f
            ).addCallback(reply)
        return reply(results)

    def _deleted(self, removed: bool) -> bytes:
        counters = self.factory.counters
        if removed:
            counters.delete_hits += 1
            return memcache.DELETED
        counters.delete_misses += 1
        return memcache.NOT_FOUND

    def _touch(self, store, sid: bytes, data: Optional[bytes], ms: int):
        counters = self.factory.counters
        if data is None:
            counters.touch_misses += 1
            return memcache.NOT_FOUND
        counters.touch_hits += 1
        removed = store.remove(sid)
        if not ms:
            return _then(removed, lambda _: memcache.TOUCHED)
        _settled(removed)
        return _then(store.add(sid, data, ms),
                     lambda r: memcache.TOUCHED if r == wire.OK else _add_reply(r))


class MemcacheFactory(Factory):
    """What the memcache connections of one tool share: store, clock, counters, stats."""

    protocol = MemcacheProtocol
    noisy = False

    def __init__(self, store, clock, stats: Optional[Callable[[], list]] = None,
                 allow_flush: bool = False, counters: Optional[MemcacheCounters] = None):
        self.store = store
        self.clock = clock
        self.allow_flush = allow_flush
        self.counters = counters if counters is not None else MemcacheCounters()
        self.started = clock.seconds()
        self._stats = stats
        self.connections = set()    # the live MemcacheProtocols
        self.store_blocked = False

    # A store on the far side of a connection (dc_client's relay) asks for a pause when
    # that connection stops taking requests, and for more when it takes them again.
    def store_full(self) -> None:
        """Stop reading every connection until ``store_ready``."""
        self.store_blocked = True
        for protocol in list(self.connections):
            protocol._pause(_PAUSE_STORE)

    def store_ready(self) -> None:
        """Read the connections again (those with no other reason to wait)."""
        self.store_blocked = False
        for protocol in list(self.connections):
            protocol._resume(_PAUSE_STORE)

    def stats(self) -> list:
        """memcached's general statistics, under memcached's names."""
        now = self.clock.seconds()
        c = self.counters
        pairs = [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(time.time())),
            ("version", VERSION),
            ("pointer_size", 64),
            ("curr_connections", c.curr_connections),
            ("total_connections", c.total_connections),
            ("cmd_get", c.cmd_get),
            ("cmd_set", c.cmd_set),
            ("cmd_flush", c.cmd_flush),
            ("cmd_touch", c.cmd_touch),
            ("delete_misses", c.delete_misses),
            ("delete_hits", c.delete_hits),
            ("touch_hits", c.touch_hits),
            ("touch_misses", c.touch_misses),
        ]
        if self._stats is not None:
            pairs += self._stats()
        return pairs


def store_stats(store, counters, distcache_connections: Callable[[], int]) -> Callable[[], list]:
    """dc_server's part of the stats reply: its store and its distcache connections."""

    def pairs() -> list:
        known = [
            ("get_hits", counters.get_hits),
            ("get_misses", counters.get_misses),
            ("curr_items", len(store)),
            ("bytes", getattr(store, "bytes", None)),
            ("evictions", getattr(store, "evictions", None)),
            ("expired_unfetched", getattr(store, "expirations", None)),
            ("limit_items", store.max_sessions),
            ("distcache_connections", distcache_connections()),
        ]
        # a shared store (Redis) does not count some of these here: leave them out
        return [(name, value) for name, value in known if value is not None]

    return pairs
