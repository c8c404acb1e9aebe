"""Door+pool nodes sharing one PostgreSQL namespace.

Each node's pool registers itself (cluster_db.pool_node) and refreshes its
free space with a heartbeat.  The namespace records which pool holds each
file.  A door asked to open a file another node's pool holds files a mover
request; that node's :class:`Cluster` hears of it through LISTEN/NOTIFY,
opens the file on its own pool, listens for the client's data connection
and writes back ``host port challenge``, which the door relays as its
``connect`` reply; the transfer's outcome comes back the same way.  New
files go to the live pool with the most free space (this node's on a tie).

A pool whose heartbeat stopped is refused at once; one that does not
answer a request within ``answer_timeout`` fails the open with a message
naming it, and the request is withdrawn.
"""

import os

from twisted.internet import defer, task
from twisted.logger import Logger

from distcache.dcap import control
from distcache.dcap.cluster_db import (
    CANCELLED, CONNECTED, DISCARDS, DONE, FAILED, LISTENING, REPLIES, REQUESTS, ClusterDB,
    Listener,
)
from distcache.dcap.errors import RC_DISK_IO, RC_INTERNAL, DcapError, TransferError
from distcache.dcap.mover import new_challenge
from distcache.dcap.namespace import Access, Subject
from distcache.dcap.session import error_of
from distcache.dcap.transfer import Transfer

log = Logger()


class PoolNode:
    """One registered pool as the last heartbeat saw it."""

    def __init__(self, name, host, door_port, free_bytes, age):
        self.name = name
        self.host = host
        self.door_port = door_port
        self.free_bytes = free_bytes
        self.age = age

    def __repr__(self):
        return "%s at %s:%d" % (self.name, self.host, self.door_port)


def free_bytes(directory):
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


#: How much more free space (a fraction) another pool needs to take a new file.
PREFER_LOCAL = 0.05


def choose_pool(local, local_free, nodes, down_after, prefer_local=PREFER_LOCAL):
    """The name of the pool a new file goes to (see Cluster.pool_for_new)."""
    best, most = local, local_free * (1 + prefer_local)
    for node in nodes:
        if node.name != local and node.age < down_after and node.free_bytes > most:
            best, most = node.name, node.free_bytes
    return best


class Cluster:
    """This node's part: its pool's registration, remote opens asked and served."""

    def __init__(self, url, pool, factory, workers, reactor, host, door_port,
                 heartbeat=5.0, down_after=15.0, answer_timeout=15.0, accept_timeout=120.0):
        self.url = url
        self.pool = pool
        self.factory = factory
        self.workers = workers
        self.reactor = reactor
        self.host = host
        self.door_port = door_port
        self.heartbeat_interval = heartbeat
        self.down_after = down_after
        self.answer_timeout = answer_timeout
        self.accept_timeout = accept_timeout
        self.db = ClusterDB(url)
        self.pools = {}
        self.waiting = {}   # request id -> RemoteTransfer (asked by this door)
        self.serving = {}   # request id -> Transfer (served by this pool)
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = reactor
        self._beat_failing = False
        self.listener = Listener(url, (REQUESTS, REPLIES, DISCARDS), self._notified, reactor)
        self._heard = False  # the notification connection has been up once
        pool.discard_elsewhere = self.discard_elsewhere

    @property
    def name(self):
        return self.pool.name

    def start(self):
        self.listener.start()
        self._beat.start(self.heartbeat_interval, now=True)

    def stop(self):
        if self._beat.running:
            self._beat.stop()
        self.listener.stop()
        for remote in list(self.waiting.values()):
            remote.kill("door stopping")
        for transfer in list(self.serving.values()):
            transfer.kill("door stopping")
        # after the replies just queued, on the thread that uses the connection
        d = defer.maybeDeferred(self.workers.database, self.db.close)
        d.addErrback(lambda f: None)

    # -- the registry ----------------------------------------------------------

    def _heartbeat(self):
        d = self.workers.database(self.db.heartbeat, self.name, self.host, self.door_port,
                                  free_bytes(self.pool.directory))
        return defer.maybeDeferred(lambda: d).addCallbacks(self._seen, self._beat_failed)

    def _seen(self, rows):
        self.pools = {r[0]: PoolNode(*r) for r in rows}
        if self._beat_failing:
            log.info("pool {name} registered again in the namespace database", name=self.name)
            self._beat_failing = False

    def _beat_failed(self, failure):
        if not self._beat_failing:
            log.warn("pool {name} cannot register in the namespace database: {error}",
                     name=self.name, error=failure.getErrorMessage())
            self._beat_failing = True

    def is_local(self, name):
        """True for this node's pool, and for files no pool is recorded for."""
        return not name or name == self.name

    def pool_for_new(self):
        """The live pool with the most free space.

        This node's own pool wins unless another has more than
        ``PREFER_LOCAL`` (a fraction) more room: pools on one file system, or
        nearly equal ones, keep their own doors' files instead of flapping.
        """
        return choose_pool(self.name, free_bytes(self.pool.directory), self.pools.values(),
                           self.down_after)

    # -- asking another pool (door side) ---------------------------------------

    def remote_open(self, session, pool, mode, path, subject, create_mode=0o644,
                    replace=False, overwrite_hint=None):
        """The transfer of an open that pool serves; the door's session starts it."""
        fields = dict(pool=pool, door=self.name, sid=session.sid, mode=mode, path=path,
                      uid=subject.uid, gid=subject.gid, gids=list(subject.gids),
                      user_name=subject.user, access=subject.access.value,
                      create_mode=create_mode, replace=bool(replace),
                      overwrite_hint=overwrite_hint)
        return RemoteTransfer(self, fields, "#%s %s %s on %s" % (session.tid, mode, path, pool))

    def _notified(self, channel, payload):
        if channel is None:  # (re)connected: pick up anything missed meanwhile
            if self._heard:  # removals may have been missed: their data is orphaned
                self._sweep()
            self._heard = True
            self._claim()
            self._refresh(list(self.waiting))
        elif channel == DISCARDS:
            pool, _, pnfsid = payload.rpartition(" ")
            if pool == self.name:
                self._discard(pnfsid)
        elif channel == REQUESTS and payload == self.name:
            self._claim()
            self._check_cancelled()
        elif channel == REPLIES and payload.isdigit() and int(payload) in self.waiting:
            self._refresh([int(payload)])

    def _refresh(self, ids):
        if not ids:
            return
        d = self.workers.database(self.db.replies, ids)
        defer.maybeDeferred(lambda: d).addCallbacks(
            lambda rows: [self.waiting[r["id"]].update(r) for r in rows if r["id"] in self.waiting],
            lambda f: log.warn("cannot read mover replies: {error}", error=f.getErrorMessage()))

    # -- removed files whose data another pool holds ---------------------------

    def discard_elsewhere(self, entry):
        """A file was removed or replaced here; the pool that holds its data deletes it."""
        d = defer.maybeDeferred(self.workers.database, self.db.discarded, entry.pool,
                                entry.pnfsid)
        d.addErrback(lambda f: log.warn(
            "cannot ask pool {pool} to delete the data of {pnfsid}: {error} (it removes "
            "orphaned data when it starts or its notifications come back)",
            pool=entry.pool, pnfsid=entry.pnfsid, error=f.getErrorMessage()))

    def _discard(self, pnfsid):
        d = defer.maybeDeferred(self.workers.database, self.pool.discard_orphan, pnfsid)
        d.addErrback(lambda f: log.warn("cannot delete the data of {pnfsid}: {error}",
                                        pnfsid=pnfsid, error=f.getErrorMessage()))

    def _sweep(self):
        d = defer.maybeDeferred(self.workers.database, self.pool.sweep_orphans)
        d.addErrback(lambda f: log.warn("pool sweep failed: {error}",
                                        error=f.getErrorMessage()))

    # -- serving another door (pool side) --------------------------------------

    def _claim(self):
        d = defer.maybeDeferred(self.workers.database, self.db.claim, self.name)
        d.addCallbacks(lambda requests: [self._serve(r) for r in requests],
                       lambda f: log.warn("cannot take mover requests: {error}",
                                          error=f.getErrorMessage()))

    def _check_cancelled(self):
        if not self.serving:
            return
        d = defer.maybeDeferred(self.workers.database, self.db.cancelled, list(self.serving))
        d.addCallbacks(
            lambda ids: [self.serving[i].kill("the door withdrew the request")
                         for i in ids if i in self.serving],
            lambda f: None)

    def _reply(self, rid, state, **kw):
        d = defer.maybeDeferred(self.workers.database, self.db.reply, rid, state, **kw)
        d.addErrback(lambda f: log.warn("cannot answer mover request {rid}: {error}", rid=rid,
                                        error=f.getErrorMessage()))

    def _serve(self, req):
        rid, mode, path = req["id"], req["mode"], req["path"]
        pool = self.pool
        subject = Subject(req["uid"], req["gid"], Access(req["access"]),
                          gids=tuple(req["gids"] or ()), user=req["user_name"] or "")
        label = "%s %s for %s" % (mode, path, req["door"])
        log.info("mover request {rid} from {door}: {mode} {path}", rid=rid, door=req["door"],
                 mode=mode, path=path)
        if mode == "r":
            d = defer.maybeDeferred(pool.namespace.open_read, path, subject)
            d.addCallback(lambda entry: entry if pool.is_cached(entry) else pool.stage(entry))
            d.addCallback(lambda entry: self._transfer(req["sid"], label, source=pool.open_read(entry),
                                                       size=entry.size))
        else:
            d = defer.maybeDeferred(pool.open_write, path, subject, req["create_mode"],
                                    replace=req["replace"], copy_existing=(mode == "rw"),
                                    overwrite_hint=req["overwrite_hint"])
            d.addCallback(lambda up: self._transfer(
                req["sid"], label, upload=up,
                size=up.old.size if (mode == "rw" and up.old is not None) else 0))
        d.addCallback(self._listen, rid)
        d.addErrback(lambda f: self._reply(rid, FAILED, error=error_of(f)))

    def _transfer(self, sid, label, **what):
        """A transfer with this door's policy buffers (the client's own options stay at its door)."""
        policy = self.factory.policy
        return Transfer(sid, label=label, policy=policy, buffers=policy.buffers_for_open({}),
                        **what)

    def _listen(self, transfer, rid):
        self.serving[rid] = transfer
        challenge = new_challenge()
        state = {"port": None, "timer": None}

        def close_port():
            if state["timer"] is not None and state["timer"].active():
                state["timer"].cancel()
            port, state["port"] = state["port"], None
            if port is not None:
                port.stopListening()

        def connected():
            close_port()
            self._reply(rid, CONNECTED)

        def ended(error):
            close_port()
            self.serving.pop(rid, None)
            self._reply(rid, DONE if error is None else FAILED, error=error,
                        moved=(transfer.bytes_in, transfer.bytes_out))
            log.info("mover request {rid} ended: {outcome}", rid=rid,
                     outcome="ok" if error is None else error.message)

        transfer.outcome.addCallback(ended)
        interface = "" if self.factory.config.connect_host else self.host
        d = defer.maybeDeferred(self.factory.expect_mover, interface, transfer, challenge,
                                connected)

        def listening(port):
            if transfer.ended:
                port.stopListening()
                return
            state["port"] = port
            state["timer"] = self.reactor.callLater(
                self.accept_timeout, transfer.kill,
                "no client connected within %d s" % (self.accept_timeout,))
            self._reply(rid, LISTENING, host=self.host, port=port.getHost().port,
                        challenge=challenge)

        d.addCallbacks(listening, lambda f: transfer.end(TransferError(
            RC_INTERNAL, "cannot open a data port: %s" % (f.getErrorMessage(),))))


class _RemotePort:
    """What the door's session holds as its listener: the serving node closes the real one."""

    def stopListening(self):
        return None


class RemoteTransfer:
    """The door's view of a transfer another node's pool serves.

    Quacks like transfer.Transfer where the door's session uses one:
    ``outcome`` fires once with None or the error, ``kill`` ends it.
    """

    remote = True

    def __init__(self, cluster, fields, label):
        self.cluster = cluster
        self.fields = fields
        self.label = label
        self.rid = None
        self.node = None
        self.session = None
        self.outcome = defer.Deferred()
        self.ended = False
        self.bytes_in = self.bytes_out = 0  # as the serving pool reports them
        self._timer = None

    def start(self, session):
        """File the request; the session hears `listening` when the pool answers."""
        self.session = session
        cluster = self.cluster
        self._timer = cluster.reactor.callLater(cluster.answer_timeout, self._no_answer)
        d = defer.maybeDeferred(cluster.workers.database, cluster.db.request, self.fields,
                                cluster.down_after)
        d.addCallbacks(self._filed, lambda f: self.end(error_of(f)))
        return None

    def _filed(self, answer):
        rid, row = answer
        pool = self.fields["pool"]
        if row is None:
            self.end(DcapError(RC_INTERNAL, "Pool %s holding the file is not registered"
                                  % (pool,), "EIO"))
            return
        self.node = PoolNode(*row)
        if rid is None:
            self.end(DcapError(RC_INTERNAL, "Pool %s is down (last heard from %d s ago)"
                                  % (self.node, self.node.age), "EIO"))
            return
        self.rid = rid
        log.info("transfer {label}: pool {node} asked to start the mover (request {rid})",
                 label=self.label, node=self.node, rid=rid)
        if self.ended:
            self._withdraw()
        else:
            self.cluster.waiting[rid] = self

    def update(self, row):
        """The serving node wrote back: relay where it listens, or how it ended."""
        state = row["state"]
        session = self.session
        if self.ended or session is None:
            return
        self.bytes_in, self.bytes_out = row["bytes_in"] or 0, row["bytes_out"] or 0
        if state == LISTENING and row["port"]:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            session.listening(_RemotePort(), control.connect(
                session.sid, session.cid, row["host"], row["port"], row["challenge"]))
        elif state == CONNECTED:
            session.mover_connected()
        elif state == DONE:
            self.end(None)
        elif state == FAILED:
            self.end(TransferError(row["rc"] or RC_INTERNAL, row["message"] or "remote mover failed",
                                      row["posix"]))
        elif state == CANCELLED:
            self.end(TransferError(RC_DISK_IO, "mover request withdrawn", "EIO"))

    def _no_answer(self):
        if self.ended:
            return
        node = self.node or self.fields["pool"]
        log.warn("transfer {label}: pool {node} did not answer within {t} s", label=self.label,
                 node=node, t=self.cluster.answer_timeout)
        self.kill("Pool %s did not answer within %d s: it is down or unreachable"
                  % (node, self.cluster.answer_timeout), rc=RC_INTERNAL)

    def kill(self, reason, rc=RC_DISK_IO):
        if self.ended:
            return
        self.end(TransferError(rc, reason, "EIO"))
        self._withdraw()

    def _withdraw(self):
        if self.rid is not None:
            d = defer.maybeDeferred(self.cluster.workers.database, self.cluster.db.cancel,
                                    self.rid, self.fields["pool"])
            d.addErrback(lambda f: None)

    def end(self, error=None):
        if self.ended:
            return
        self.ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.rid is not None:
            self.cluster.waiting.pop(self.rid, None)
        self.outcome.callback(error)
