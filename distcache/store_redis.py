"""A session store in Redis, so that dc_server restarts and several dc_servers share sessions.

``--store redis://[[user]:password@]host:port[/db]`` (``rediss://`` for TLS) names a single
Redis; ``--store redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster``
for TLS) names a Redis Cluster by any of its nodes.  Every dc_server pointed at the same Redis
sees every session the others stored.

Semantics are the local store's (:mod:`distcache.store`): ADD stores only when the id is
absent (0x65 otherwise), with the expiry kept by Redis (``SET ... PX``); GET, HAVE and REMOVE
see only live sessions.  An ADD with a timeout of 0 answers OK and stores nothing visible, as
the local store (and the C server) do with a session that expires the moment it is stored;
if the id is live it is refused with 0x65, and a full cache still makes room, as locally.

``--sessions N`` stays an exact limit with soonest-expiry eviction, not Redis's own memory
policy.  Redis's ``volatile-ttl`` evicts by sampling a few keys, so which session goes (and
how many are held) would follow memory use and chance rather than the number an operator
set; the local store's promise is "never more than N, and the one to go is the one that
expires soonest".  So sessions are spread over *shards*, each a hash tag: a session's key and
its shard's expiry index (a sorted set scored by expiry) live in one Redis slot, and a Lua
script adds atomically: drop the shard's expired index entries, evict the soonest-expiring
sessions while the shard is full, then ``SET NX PX``.  A single Redis has one shard, so the
limit and the eviction order are exactly the local store's.  A Cluster has several shards
(``?shards=K``, default 16), one per even slice of the slot space so they spread over the
nodes; shard ``i`` holds at most its share of N (the shares sum to N), so the total never
exceeds N, and a full shard evicts its own soonest-expiring session.  Time is Redis's
(``TIME`` in the script), so dc_servers on hosts with skewed clocks agree on expiry.  Redis
should run with ``maxmemory-policy noeviction`` (or enough memory): a session Redis evicts
behind the index's back only lingers in the index until its expiry.

The client is redis-py's asyncio client (maintained, Cluster-aware: slot map, MOVED/ASK
redirections, failover re-discovery), so dc_server runs on Twisted's asyncio reactor when a
Redis store is configured; the default local store keeps the default reactor.  Requests
arriving in one reactor turn go out together as one pipeline (many requests in flight per
connection); while one pipeline is in flight the next one gathers, so Redis runs requests
in the order dc_server received them.

Redis down, slow or failing over: every request still gets its answer within ``timeout``
seconds, a miss for GET/HAVE/REMOVE and a refused ADD (0x01).  The outage is logged once
when it starts and once when Redis answers again; redis-py reconnects by itself.  A request
answered that way may still run if Redis had already read it (a refused ADD may yet store).
redis-py's own retries are off: a retried pipeline would run its ADDs twice.

The session count in the activity line is the shards' index sizes, fetched in the
background when the line is due, so it trails by up to a second.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from distcache import wire
from distcache.store import ISessionStore

#: The schemes ``--store`` accepts for Redis.
SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")
DEFAULT_CLUSTER_SHARDS = 16
DEFAULT_TIMEOUT = 1.0
KEY_PREFIX = b"distcache:"
SLOTS = 16384

# One script for both writes, so that a Redis missing it (new, restarted, failed over)
# refuses every write of a pipeline, and rerunning from there keeps the request order.
# KEYS: session key, shard index.
# ARGV 'remove', id: returns 1 when a live session went.
# ARGV 'add', id, data, timeout ms, shard limit, key prefix: returns the wire result byte.
_SCRIPT = b"""
if ARGV[1] == 'remove' then
  local n = redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return n
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 101 end
local ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5]) + 1
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('DEL', ARGV[6] .. gone[i]) end
end
if ttl == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
return 0
"""


class StoreURLError(ValueError):
    """A ``--store`` value that names no Redis this store can use."""


@dataclass(frozen=True)
class RedisTarget:
    """Where the sessions live, parsed from a ``--store`` URL; plain data, so it pickles."""

    url: str                      # for redis-py (standalone) or the first node (cluster)
    cluster: bool = False
    nodes: Tuple[Tuple[str, int], ...] = ()
    shards: int = 1
    timeout: float = DEFAULT_TIMEOUT
    options: Dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def shown(self) -> str:
        """The address for logs, without any password."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        where = ",".join(f"{h}:{p}" for h, p in self.nodes) if self.cluster else \
            f"{host}:{parts.port or 6379}{parts.path}"
        return f"{parts.scheme}{'+cluster' if self.cluster else ''}://{where}"


def is_redis_url(text: str) -> bool:
    return text.split(":", 1)[0].lower() in SCHEMES


def parse_store_url(text: str) -> RedisTarget:
    """Parse ``redis://``, ``rediss://``, ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    try:
        return _parse(text)
    except StoreURLError:
        raise
    except ValueError as e:
        raise StoreURLError(f"{text!r}: {e}") from None


class _URLParts(NamedTuple):
    scheme: str
    netloc: str
    path: str
    query: str


def _split(text: str) -> _URLParts:
    """scheme://netloc/path?query, split by hand.

    A Cluster URL's netloc holds several host:port items, bracketed IPv6 among
    them; urllib's urlsplit refuses that shape in some Python releases.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise StoreURLError(f"{text!r}: the store is 'local' or a {', '.join(SCHEMES)} URL")
    rest = rest.split("#", 1)[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return _URLParts(scheme, netloc, slash + path, query)


def _parse(text: str) -> RedisTarget:
    parts = _split(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise StoreURLError(f"{text!r}: the store is 'local' or a {', '.join(SCHEMES)} URL")
    cluster = scheme.endswith("+cluster")
    base = scheme.split("+", 1)[0]
    query = dict(parse_qsl(parts.query))
    shards = query.pop("shards", None)
    timeout = query.pop("timeout", None)
    try:
        timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    except ValueError:
        timeout = -1.0
    if not 0.01 <= timeout <= 60:
        raise StoreURLError(f"{text!r}: timeout is in seconds, from 0.01 to 60")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if not hostlist:
        raise StoreURLError(f"{text!r}: no host:port")
    nodes = []
    for item in hostlist.split(","):
        host, port = _host_port(text, item)
        nodes.append((host, port))
    if not cluster and len(nodes) > 1:
        raise StoreURLError(f"{text!r}: several hosts need redis+cluster://")
    if cluster and parts.path not in ("", "/"):
        raise StoreURLError(f"{text!r}: a Redis Cluster has only database 0")
    if not cluster and parts.path not in ("", "/"):
        db = parts.path[1:]
        if not db.isdigit():
            raise StoreURLError(f"{text!r}: the database is a number, not {unquote(db)!r}")
    if shards is None:
        count = DEFAULT_CLUSTER_SHARDS if cluster else 1
    else:
        if not shards.isdigit() or not 1 <= int(shards) <= 1024:
            raise StoreURLError(f"{text!r}: shards is a number from 1 to 1024")
        count = int(shards)
    host, port = nodes[0]
    netloc = (userinfo + "@" if userinfo else "") + _join_host(host, port)
    url = urlunsplit((base, netloc, "" if cluster else parts.path, urlencode(query), ""))
    return RedisTarget(url, cluster, tuple(nodes), count, timeout)


def check(text: str, max_sessions: int) -> RedisTarget:
    """Parse a ``--store`` URL and check it against ``--sessions``."""
    target = parse_store_url(text)
    if max_sessions < target.shards:
        raise StoreURLError(f"{text!r}: --sessions {max_sessions} is fewer than its "
                            f"{target.shards} shards")
    return target


def shown(text: str) -> str:
    """A ``--store`` value fit for logs: 'local', or the URL without its password."""
    return parse_store_url(text).shown if is_redis_url(text) else text


def use_asyncio_reactor() -> None:
    """Install Twisted's asyncio reactor, unless it is already the reactor.

    redis-py's client runs on asyncio, so a Redis store needs this reactor; it is
    installed only then, so the local store keeps the default (faster) reactor.  Called
    from ``makeService``, which twistd runs before anything imports the reactor; when
    some other reactor is already installed, the error says what to do.
    """
    import sys
    from twisted.python import usage
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor
        loop = asyncio.new_event_loop()
        # Python 3.9's asyncio locks and futures bind to get_event_loop() when made, and
        # redis-py makes some before the reactor runs: they must get the reactor's loop.
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
        return
    from twisted.internet import reactor
    if getattr(reactor, "_asyncioEventloop", None) is None:
        raise usage.UsageError(
            f"a Redis store needs Twisted's asyncio reactor, but {type(reactor).__name__} "
            "is already installed: run twistd --reactor=asyncio")


def open_store(text: str, reactor, max_sessions: int) -> "RedisSessionStore":
    """The Redis store a ``--store`` URL names, on ``reactor`` (which must be asyncio's)."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        raise RuntimeError("a Redis store needs Twisted's asyncio reactor "
                           "(twistd --reactor=asyncio)")
    target = parse_store_url(text)
    return RedisSessionStore(target, max_sessions, timeout=target.timeout, loop=loop)


def _host_port(text: str, item: str) -> Tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise StoreURLError(f"{text!r}: no host in {item!r}")
    if not port:
        return host, 6379
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StoreURLError(f"{text!r}: bad port in {item!r}")
    return host, int(port)


def _join_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shard_tags(count: int) -> List[bytes]:
    """One hash tag per shard, the i-th hashing into the i-th even slice of the slot space.

    Deterministic, so every dc_server sharing a Redis picks the same tags.
    """
    from redis.crc import key_slot
    tags = []
    for i in range(count):
        low, high = i * SLOTS // count, (i + 1) * SLOTS // count
        n = 0
        while True:
            tag = b"%d.%d" % (i, n)
            if low <= key_slot(tag) < high:
                break
            n += 1
        tags.append(tag)
    return tags


def shard_limits(total: int, count: int) -> List[int]:
    """Split ``total`` sessions over ``count`` shards, the shares summing to ``total``."""
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


class Outage:
    """Whether Redis answers, so that an outage is logged once when it starts and once at its end.

    Two states; ``failed`` and ``answered`` are handled in both:

    ======== ============================ ===============================
    state    failed(reason)               answered()
    ======== ============================ ===============================
    up       log "unreachable"; -> down   (nothing)
    down     count it                     log "reachable again"; -> up
    ======== ============================ ===============================
    """

    log = Logger()

    def __init__(self, shown: str, clock):
        self._shown = shown
        self._clock = clock
        self.down = False
        self.failures = 0
        self.outages = 0
        self._since = 0.0
        self._failed_here = 0

    def failed(self, reason: str) -> None:
        self.failures += 1
        if not self.down:
            self.down = True
            self.outages += 1
            self._since = self._clock()
            self._failed_here = 1
            self.log.warn("session store {store} unreachable ({reason}); answering misses "
                          "and refusing ADDs until it is back", store=self._shown, reason=reason)
        else:
            self._failed_here += 1

    def answered(self) -> None:
        if self.down:
            self.down = False
            self.log.info("session store {store} answers again after {seconds:.1f} s "
                          "({failed} requests missed)", store=self._shown,
                          seconds=self._clock() - self._since, failed=self._failed_here)


class _Op:
    """One request waiting for Redis: its command, its Deferred and what failure answers."""

    __slots__ = ("args", "deferred", "on_failure", "convert", "timer")

    def __init__(self, args, on_failure, convert):
        self.args = args
        self.deferred = defer.Deferred()
        self.on_failure = on_failure
        self.convert = convert
        self.timer = None

    def settle(self, value) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.deferred.called:
            self.deferred.callback(value)


@implementer(ISessionStore)
class RedisSessionStore:
    """:class:`ISessionStore` over Redis; every method answers with a Deferred that never fails.

    Must be used on an asyncio event loop (Twisted's asyncio reactor drives one); ``loop``
    defaults to the running or current one.
    """

    def __init__(self, target: RedisTarget, max_sessions: int = 512,
                 timeout: Optional[float] = None, client=None, loop=None):
        if max_sessions < target.shards:
            raise ValueError(f"--sessions {max_sessions} is fewer than the {target.shards} "
                             "shards of the Redis store")
        self.target = target
        self.max_sessions = max_sessions
        self.timeout = target.timeout if timeout is None else timeout
        self._loop = loop or asyncio.get_event_loop()
        self._client = client if client is not None else connect(target, self.timeout)
        self._tags = shard_tags(target.shards)
        self._limits = [b"%d" % n for n in shard_limits(max_sessions, target.shards)]
        self._indexes = [KEY_PREFIX + b"{" + tag + b"}:index" for tag in self._tags]
        self._prefixes = [KEY_PREFIX + b"{" + tag + b"}:s:" for tag in self._tags]
        self._sha = _sha1(_SCRIPT)
        self._pending: List[_Op] = []
        self._flush_scheduled = False
        # One pipeline in flight: Redis then runs requests in the order they came, across
        # all connections, as the local store does; requests arriving meanwhile wait and
        # go out together as the next pipeline.
        self._pipelines_free = 1
        self._count = 0
        self._counting = False
        self._closed = False
        self.outage = Outage(target.shown, self._loop.time)

    # ISessionStore

    def add(self, session_id: bytes, data: bytes, timeout_ms: int):
        shard = self._shard(session_id)
        return self._submit(
            ("EVALSHA", self._sha, 2, self._prefixes[shard] + session_id,
             self._indexes[shard], b"add", session_id, data, timeout_ms, self._limits[shard],
             self._prefixes[shard]), wire.NOTOK, int)

    def get(self, session_id: bytes):
        shard = self._shard(session_id)
        return self._submit(("GET", self._prefixes[shard] + session_id), None, None)

    def have(self, session_id: bytes):
        shard = self._shard(session_id)
        return self._submit(("EXISTS", self._prefixes[shard] + session_id), False, bool)

    def remove(self, session_id: bytes):
        shard = self._shard(session_id)
        return self._submit(
            ("EVALSHA", self._sha, 2, self._prefixes[shard] + session_id,
             self._indexes[shard], b"remove", session_id), False, bool)

    def __len__(self) -> int:
        """The count from the shards' indexes, refreshed in the background when asked."""
        if not self._counting and not self._closed:
            self._counting = True
            self._loop.create_task(self._recount())
        return self._count

    async def aclose(self) -> None:
        self._closed = True
        for op in self._pending:
            op.settle(op.on_failure)
        self._pending = []
        await self._client.aclose()

    def close(self) -> defer.Deferred:
        """Close the Redis connections; a Deferred for Twisted's stopService."""
        return defer.Deferred.fromFuture(self._loop.create_task(self.aclose()))

    # the pipeline

    def _shard(self, session_id: bytes) -> int:
        return zlib.crc32(session_id) % len(self._tags) if len(self._tags) > 1 else 0

    def _submit(self, args, on_failure, convert) -> defer.Deferred:
        op = _Op(args, on_failure, convert)
        if self._closed:
            op.settle(on_failure)
            return op.deferred
        op.timer = self._loop.call_later(self.timeout, self._expired, op)
        self._pending.append(op)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return op.deferred

    def _expired(self, op: _Op) -> None:
        op.timer = None
        if op.deferred.called:
            return
        try:
            self._pending.remove(op)
        except ValueError:
            pass
        self.outage.failed(f"no answer within {self.timeout:g} s")
        op.settle(op.on_failure)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or self._pipelines_free <= 0:
            return
        batch, self._pending = self._pending, []
        self._pipelines_free -= 1
        self._loop.create_task(self._send(batch))

    async def _send(self, batch: List[_Op]) -> None:
        try:
            results = await self._pipeline(batch)
        except Exception as e:
            self.outage.failed(_reason(e))
            for op in batch:
                op.settle(op.on_failure)
        else:
            self._settle(batch, results)
        finally:
            self._pipelines_free += 1
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)

    async def _pipeline(self, batch: List[_Op]) -> list:
        pipe = self._client.pipeline(transaction=False)
        for op in batch:
            pipe.execute_command(*op.args)
        results = await pipe.execute(raise_on_error=False)
        first = next((i for i, r in enumerate(results) if _is_noscript(r)), None)
        if first is None:
            return results
        # A Redis without the script (new, restarted, failed over) ran none of the writes
        # it was sent from there on.  Rerun, in order, those writes (by EVAL, which loads
        # the script) and the reads among them, so every read sees the writes before it.
        # Writes that did run went to other Cluster nodes, so other sessions.
        again = [i for i in range(first, len(batch))
                 if _is_noscript(results[i]) or batch[i].args[0] != "EVALSHA"]
        pipe = self._client.pipeline(transaction=False)
        for i in again:
            args = batch[i].args
            if args[0] == "EVALSHA":
                args = ("EVAL", _SCRIPT) + args[2:]
            pipe.execute_command(*args)
        for i, r in zip(again, await pipe.execute(raise_on_error=False)):
            results[i] = r
        return results

    def _settle(self, batch: List[_Op], results: list) -> None:
        failure = None
        for op, result in zip(batch, results):
            if isinstance(result, Exception):
                failure = failure or result
                op.settle(op.on_failure)
            else:
                op.settle(op.convert(result) if op.convert is not None else result)
        if failure is not None:
            self.outage.failed(_reason(failure))
        else:
            self.outage.answered()

    async def _recount(self) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for index in self._indexes:
                pipe.zcard(index)
            counts = await asyncio.wait_for(pipe.execute(), self.timeout)
            self._count = sum(counts)
        except Exception:
            pass  # an outage is reported by the requests themselves
        finally:
            self._counting = False


def connect(target: RedisTarget, timeout: float = DEFAULT_TIMEOUT):
    """A redis-py asyncio client (standalone or Cluster) for ``target``."""
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                   decode_responses=False)
    options.update(target.options)
    if not target.cluster:
        from redis.asyncio import Redis
        return Redis.from_url(target.url, **options)
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    nodes = [ClusterNode(host, port) for host, port in target.nodes]
    parts = urlsplit(target.url)
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        options["ssl"] = True
    for name, value in parse_qsl(parts.query):
        options.setdefault(name, value)
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    # No retries: a retried pipeline runs its ADDs twice on the nodes that had answered
    # (the second finds the first: 0x65).  A failed request is answered as a miss or a
    # refused ADD, and the next pipeline finds the new slot map.
    return RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **options)


def _sha1(script: bytes) -> str:
    import hashlib
    return hashlib.sha1(script).hexdigest()


def _is_noscript(result) -> bool:
    from redis.exceptions import NoScriptError
    return isinstance(result, NoScriptError)


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
