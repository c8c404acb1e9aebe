"""The DCAP door: control connections, their requests, and the movers they start.

A `DoorProtocol` speaks the control lines of `control.py` with one client.
Namespace requests are answered at once when the store answers at once;
any request still going on (an ``open`` or ``opendir`` until its mover is
done, or a store answer that comes later) is a `Session`, whose life is the
state machine in `session.py`.  Several sessions run side by side on one
connection.  When the control connection ends, every session on it ends:
movers are killed, partial writes discarded, pending waits cancelled.

A stopping door (`DoorFactory.drain`) refuses new opens, lets running
transfers finish for a grace period, then tells the clients still connected
``0 0 server shutdown`` and closes their connections.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import OrderedDict
from io import BytesIO
from typing import Dict, Optional, Set

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from distcache.dcap import accounting, control, retention
from distcache.address import address_text
from distcache.ratelimit import RateLimitedLogs
from distcache.dcap.auth import Account, PasswordFile
from distcache.dcap.control import BadURL, ProtocolError, Request
from distcache.dcap.doorconfig import DoorConfig, parse_version_range  # noqa: F401 (re-exported)
from distcache.dcap.doorpolicy import DoorPolicy
from distcache.dcap.errors import (
    RC_BAD_COMMAND, RC_DISK_IO, RC_HSM_NOT_ENABLED, RC_INTERNAL, RC_INVALID_ARGS,
    RC_NOT_CACHED, RC_NOT_REGULAR,
    DcapError, NotFound, TransferError,
)
from distcache.dcap.ioqueue import DEFAULT_QUEUE, IoQueues
from distcache.dcap.portrange import PortRangeExhausted
from distcache.dcap.mover import DataChannel, connect_to_client, new_challenge
from distcache.dcap.transfer import Transfer
from distcache.dcap.namespace import Subject, listing_text
from distcache.dcap.session import CLIENT_GONE, DOOR_STOPPING, Session
from distcache.dcap.trust import in_networks, subject_for
from distcache.dcap.tunnel import LoginGate
from distcache.dcap.workers import INLINE, then

log = Logger()

#: Modes of new files and directories whose client sent no -mode, as dCache gives them.
DEFAULT_FILE_MODE = 0o600
DEFAULT_DIR_MODE = 0o700

#: The line libdcap reads as "this door is going away" (any session id).
SHUTDOWN_LINE = b"0 0 server shutdown\n"


class DoorProtocol(LineOnlyReceiver):
    """One client's control connection: framing, dispatch and the verbs."""

    delimiter = b"\n"
    MAX_LENGTH = 65536
    #: Failed writes a connection remembers for the client's clean-up unlink.
    FAILED_WRITES_KEPT = 16
    #: Seconds after a failed write during which unlinks of its path are its clean-up.
    CLEANUP_WINDOW = 30.0

    def __init__(self):
        self.sessions: Dict[int, Session] = {}
        self.welcomed = False
        self.uid = -1
        self.gid = -1
        self.pid = "<unknown>"
        self.closed = False
        self.stopping = False  # the door told this client it shuts down
        self.peer = "?"
        #: Whether this client's claimed uid/gid are believed (--trust-client-uid).
        self.trusted = False
        #: Paths whose write failed on this connection -> (transfer id, when); see do_unlink.
        self.failed_writes: "OrderedDict[str, tuple]" = OrderedDict()
        #: Whether the waiting-opens limit was logged since this client last was under it.
        self.waiting_logged = False
        self.account: Optional[Account] = None  # who logged in through the ssl tunnel
        self.gate: Optional[LoginGate] = None

    @property
    def config(self) -> DoorConfig:
        return self.factory.config

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer = address_text(peer)
        host = getattr(peer, "host", None)
        allowed = self.config.allowed_subnets
        if allowed and not in_networks(host, allowed):
            self.factory.warnings["refused connections"].warn(
                "control connection from {peer} refused: not in --allowed-subnets",
                peer=self.peer)
            self.closed = True
            self.transport.abortConnection()
            return
        self.trusted = in_networks(host, self.config.trust_client_uid)
        # Replies are single short lines that the client waits for: without
        # TCP_NODELAY the last of an exchange (the open's final ok) waits on the
        # client's delayed ACK, 40 ms a small file.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.factory.connections.add(self)
        secure = ISSLTransport.providedBy(self.transport)
        log.info("control connection from {peer}{tls}{trust}", peer=self.peer,
                 tls=" (TLS)" if secure else "",
                 trust=" (client uid trusted)" if self.trusted else "")
        self.gate = LoginGate(secure, self.factory.check_password, self._line, self._logged_in,
                              self._login_refused, self._close, self.factory.reactor)

    # -- framing ---------------------------------------------------------

    def lineLengthExceeded(self, line):
        self._violation("line longer than %d bytes" % (self.MAX_LENGTH,))

    def lineReceived(self, line: bytes):
        if self.closed:
            return
        if self.gate is None:
            self._line(line)
        else:
            self.gate.line(line)

    def _line(self, line: bytes):
        """A control line past the login gate."""
        if self.closed:
            return
        try:
            request = control.parse_request(line)
        except ProtocolError as e:
            self._violation(str(e))
            return
        try:
            self._dispatch(request)
        except Exception:
            log.failure("request {command} of session {sid} from {peer} failed",
                        command=request.command, sid=request.sid, peer=self.peer)
            self.send(control.failed(request.sid, request.cid, RC_INTERNAL,
                                     "internalError : request failed"))

    def _violation(self, reason: str):
        self.factory.warnings["protocol violations"].warn(
            "protocol violation from {peer}: {reason}", peer=self.peer, reason=reason)
        self.transport.write(control.protocol_violation(reason))
        self.closed = True
        self.transport.loseConnection()

    def _logged_in(self, account: Account):
        self.account = account
        log.info("control connection from {peer}: user {user} logged in (uid {uid}, gid {gid})",
                 peer=self.peer, user=account.user, uid=account.uid, gid=account.gid)

    def _login_refused(self, reason: str):
        self.factory.warnings["refused logins"].warn(
            "control connection from {peer}: login refused: {reason}", peer=self.peer,
            reason=reason)

    def _close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, line: bytes):
        """Write a reply line while the connection is open."""
        if not self.closed and self.transport is not None:
            self.transport.write(line)

    def session_ended(self, session: Session):
        """A session is done: its id may be used again."""
        self.sessions.pop(session.sid, None)
        if session.failed_write():
            self.failed_writes.pop(session.path, None)
            self.failed_writes[session.path] = (session.tid, self.factory.reactor.seconds())
            while len(self.failed_writes) > self.FAILED_WRITES_KEPT:
                self.failed_writes.popitem(last=False)
        self.factory.session_ended()

    def transfer_finished(self, session: Session, result: str, error=None):
        """An open or opendir ended (result: one of accounting.RESULTS)."""
        self.factory.transfer_finished(session, self.peer, result, error)

    # -- dispatch ----------------------------------------------------------

    def _dispatch(self, r: Request):
        if r.command == "hello":
            self.do_hello(r)
            return
        if not self.welcomed:
            self._violation("hello expected first")
            return
        handler = getattr(self, "do_" + r.command, None) if r.command.isalpha() else None
        if handler is None:
            self.send(control.failed(r.sid, r.cid, RC_BAD_COMMAND,
                                     "protocolViolation : Invalid command '%s'" % (r.command,)))
            return
        if r.command not in ("ping", "byebye", "status") and r.sid in self.sessions:
            self.send(control.failed(r.sid, r.cid, RC_INTERNAL,
                                     "internalError : Duplicated session id"))
            return
        try:
            result = handler(r)
        except DcapError as e:
            self._fail(r, e.rc, e.message, e.posix)
            return
        except BadURL as e:
            self._fail(r, RC_INVALID_ARGS, "Invalid path: %s" % (e,), "EINVAL")
            return
        if isinstance(result, defer.Deferred):
            # a store that answers later: the request is a session until it has
            session = self._session(r, r.command)
            session.pending = result
            result.addCallbacks(lambda _: session.answered(), session.error)

    def _session(self, r: Request, command: str, path: str = "", tid: Optional[int] = None,
                 answers: bool = True) -> Session:
        session = Session(self, r.sid, r.cid, command, path, tid=tid, answers=answers,
                          clock=self.factory.reactor)
        session.request = r
        session.options = dict(r.options)
        self.sessions[r.sid] = session
        return session

    def _fail(self, r: Request, rc: int, message: str, posix: Optional[str] = None):
        log.info("request {sid} {command} from {peer} failed: {rc} {message}", sid=r.sid,
                 command=r.command, peer=self.peer, rc=rc, message=message)
        self.send(control.failed(r.sid, r.cid, rc, message, posix))

    def subject(self, r: Request) -> Subject:
        """Who the request acts as (see trust.subject_for)."""
        uid = r.int_option("uid", self.uid)
        gid = r.int_option("gid", self.gid)
        verified = self.account.subject() if self.account is not None else None
        return subject_for(self.config.access, self.trusted, uid, gid, verified)

    def path(self, r: Request, index: int = 0) -> str:
        if len(r.args) <= index:
            raise BadURL("missing path")
        return control.decode_url(r.args[index])

    # -- hello, ping, bye ------------------------------------------------

    def do_hello(self, r: Request):
        args = r.args
        version = tuple(int(x) if x.isdigit() and x.isascii() else 0 for x in args[2:5])
        major = str(version[0]) if len(version) > 0 else "0"
        minor = str(version[1]) if len(version) > 1 else "0"
        cfg = self.config
        if (cfg.client_version_min and version < cfg.client_version_min) or \
                (cfg.client_version_max and version[:len(cfg.client_version_max)] > cfg.client_version_max):
            log.warn("client version {version} from {peer} refused", version=".".join(map(str, version)),
                     peer=self.peer)
            self.closed = True
            self.transport.loseConnection()
            return
        self.uid = r.int_option("uid", -1)
        self.gid = r.int_option("gid", -1)
        self.pid = r.option("pid") or self.pid
        self.welcomed = True
        self.send(control.welcome(major, minor))

    def do_ping(self, r: Request):
        self.send(control.pong(r.sid, r.cid))

    def do_byebye(self, r: Request):
        self.send(control.byebye(r.sid, r.cid))
        self.closed = True
        self.transport.loseConnection()

    def do_status(self, r: Request):
        """The state of session r.sid on this connection, as dCache's door says it."""
        session = self.sessions.get(r.sid)
        if session is None:
            raise DcapError(RC_INTERNAL, "Session ID %d not found." % (r.sid,))
        self.send(control.status(r.sid, r.cid, session.status_text(self.uid, self.pid)))

    # -- namespace requests ---------------------------------------------

    def do_stat(self, r: Request):
        def reply(e):
            self.send(control.stat_reply(
                r.sid, r.cid, size=e.size, uid=e.uid, gid=e.gid, atime=e.atime, mtime=e.mtime,
                ctime=e.ctime, kind="dir" if e.is_dir else "file", mode=e.mode, ino=e.ino,
                nlink=2 if e.is_dir else 1))
        return then(self.factory.namespace.lookup(self.path(r), self.subject(r)), reply)

    do_lstat = do_stat

    def do_mkdir(self, r: Request):
        mode = control.decode_mode(r.option("mode"), DEFAULT_DIR_MODE) & 0o7777
        return self._ok_after(self.factory.namespace.mkdir(self.path(r), self.subject(r), mode), r)

    def do_rmdir(self, r: Request):
        return self._ok_after(self.factory.namespace.rmdir(self.path(r), self.subject(r)), r)

    def do_unlink(self, r: Request):
        """Remove a file, except as the clean-up of a write that just failed here.

        After a failed write dccp unlinks its destination (twice: after the
        close fails and again as it gives up), to remove a partial file.
        Here a failed write leaves nothing: its upload is discarded and the
        earlier version kept.  So an unlink of a path whose write failed on
        the same control connection less than CLEANUP_WINDOW seconds ago
        removes what that write left, which is nothing, and answers ok.  A
        new open of the path on the connection ends that window; an unlink
        after it, or on another connection, removes the file.
        """
        path = self.path(r)
        failed = self.failed_writes.get(path)
        if failed is not None:
            tid, when = failed
            if self.factory.reactor.seconds() - when <= self.CLEANUP_WINDOW:
                log.info("unlink {path} after its failed write (transfer {tid}) from {peer}: "
                         "nothing to remove, the earlier version is kept", path=path, tid=tid,
                         peer=self.peer)
                self._ok(r)
                return None
            del self.failed_writes[path]
        return self._ok_after(self.factory.pool.unlink(path, self.subject(r)), r)

    def do_chmod(self, r: Request):
        mode = control.decode_mode(r.option("mode"), -1)
        if mode < 0:
            raise DcapError(RC_INVALID_ARGS, "chmod needs -mode", "EINVAL")
        return self._ok_after(
            self.factory.namespace.chmod(self.path(r), self.subject(r), mode & 0o7777), r)

    def do_chown(self, r: Request):
        owner = r.option("owner") or ""
        uid_text, _, gid_text = owner.partition(":")
        try:
            uid = int(uid_text)
            gid = int(gid_text) if gid_text else None
        except ValueError:
            raise DcapError(RC_INVALID_ARGS, "chown needs -owner=UID[:GID]", "EINVAL") from None
        return self._ok_after(
            self.factory.namespace.chown(self.path(r), self.subject(r), uid, gid), r)

    def do_chgrp(self, r: Request):
        try:
            gid = int(r.option("group") or "")
        except ValueError:
            raise DcapError(RC_INVALID_ARGS, "chgrp needs -group=GID", "EINVAL") from None
        return self._ok_after(self.factory.namespace.chgrp(self.path(r), self.subject(r), gid), r)

    def do_rename(self, r: Request):
        new = self.path(r, 1)
        return self._ok_after(self.factory.namespace.rename(self.path(r), new, self.subject(r)), r)

    def do_check(self, r: Request):
        def missing(failure):
            failure.trap(DcapError)
            if failure.value.rc in (2, 10001):  # dccp reads any rc 4 as "not cached"
                raise DcapError(RC_NOT_CACHED, "File is not cached")
            return failure

        def judge(entry):
            if entry.is_file and not self.factory.has_disk_copy(entry):
                raise DcapError(RC_NOT_CACHED, "File is not cached")
            self._ok(r)

        def count(result):
            if not isinstance(result, Failure):
                outcome = accounting.CHECK_CACHED
            elif result.check(DcapError) and result.value.rc == RC_NOT_CACHED:
                outcome = accounting.CHECK_NOT_CACHED
            else:
                outcome = accounting.CHECK_ERROR
            self.factory.counters.checked(outcome)
            return result

        d = defer.maybeDeferred(self.factory.namespace.lookup, self.path(r), self.subject(r))
        d.addErrback(missing)
        d.addCallback(judge)
        d.addBoth(count)
        return d

    def do_stage(self, r: Request):
        """Recall the file to disk and pin it for ``-stagetime`` seconds (dCache's pin lifetime).

        The client is answered at once; the recall and the pin follow.  A
        stage time of 0 (dccp's default) stages without a pin.
        """
        lifetime = r.int_option("stagetime", 0)

        def start(entry):
            if not entry.is_file:
                raise DcapError(RC_NOT_REGULAR, "path is not a regular file", "EINVAL")
            pool = self.factory.pool
            d = pool.stage(entry)
            if lifetime > 0:
                d.addCallback(lambda fresh: pool.pin(fresh, lifetime))
            d.addErrback(lambda f: log.failure("staging {path} failed", f, path=entry.path))
            self._ok(r)
        return then(self.factory.namespace.lookup(self.path(r), self.subject(r)), start)

    def _ok_after(self, result, r: Request):
        """`ok` once result (a value, or a Deferred from a remote store) is in."""
        return then(result, lambda _: self._ok(r))

    def _ok(self, r: Request):
        self.send(control.ok(r.sid, r.cid))

    # -- transfers -------------------------------------------------------

    def waiting_opens(self) -> int:
        """Opens and opendirs of this connection whose data connection is not up yet."""
        return sum(1 for s in self.sessions.values() if s.tid is not None and s.waiting())

    def _admit_open(self):
        """Refuse an open beyond --max-waiting-opens (each holds an open file and a wait)."""
        limit = self.config.max_waiting_opens
        if self.waiting_opens() < limit:
            self.waiting_logged = False
            return
        if not self.waiting_logged:
            self.waiting_logged = True
            log.warn("client {peer} has {n} opens waiting for their data connection "
                     "(--max-waiting-opens); refusing more until some connect",
                     peer=self.peer, n=limit)
        raise DcapError(RC_INTERNAL, "Too many opens waiting for their data connection (%d)"
                        % (limit,), "EMFILE")

    def do_open(self, r: Request):
        by_id = bool(r.args) and control.is_pnfsid(r.args[0])
        # An open by pnfs id (libdcap resolving names through a mount) names
        # its file by the id; -path= is what the client called it, for the log.
        path = (r.option("path") or r.args[0]) if by_id else self.path(r)
        if len(r.args) < 2 or r.args[1] not in ("r", "w", "rw"):
            raise DcapError(RC_INVALID_ARGS, "open needs a mode of r, w or rw", "EINVAL")
        if self.factory.stopping:
            raise DcapError(RC_INTERNAL, "Door is shutting down")
        self._admit_open()
        if "hsm" in r.options and getattr(self.factory.pool, "hsm", None) is None:
            # an open that names an HSM needs a pool with tape behind it
            raise DcapError(RC_HSM_NOT_ENABLED, "Hsm Support Not enabled")
        mode = r.args[1]
        self.failed_writes.pop(path, None)  # a new open of the path ends the clean-up window
        if mode != "r":
            self._admit_size(r)
        subject = self.subject(r)
        pool = self.factory.pool
        namespace = self.factory.namespace
        tid = self.factory.new_transfer_id()
        session = self._session(r, "open", path, tid=tid)
        session.started = self.factory.reactor.seconds()
        log.info("transfer {tid}: open {mode} {path} {options} (session {sid} from {peer})",
                 tid=tid, mode=mode, path=r.args[0] if by_id else path, peer=self.peer, sid=r.sid,
                 options=" ".join("-%s" % k if v is None else "-%s=%s" % (k, v) for k, v in r.extras))
        session.watch = self.factory.policy.watch_open(
            tid, r.option("timeout"), session.deadline_waiting, session.deadline_reading)
        passive = "passive" in r.options or not self.config.connect_back

        def resolved(step):
            """step(path) once the pnfs id (if any) names a path."""
            if not by_id:
                return lambda: step(path)
            return lambda: then(namespace.get(r.args[0]), lambda entry: step(entry.path))

        cluster = self.factory.cluster
        session.queue_name = self._queue_name(session, r)
        if mode == "r":
            def readable(entry):
                if cluster is not None and not cluster.is_local(entry.pool):
                    session.entry = entry  # for the transfer log, as a local read records it
                    session.ready(cluster.remote_open(session, entry.pool, "r", entry.path,
                                                      subject), True)
                else:
                    self._readable(session, entry, passive)
            session.follow(resolved(lambda p: namespace.open_read(p, subject)), readable)
            return
        create_mode = control.decode_mode(r.option("mode"), DEFAULT_FILE_MODE) & 0o7777
        # -overwrite (dCache's write onto an existing file) and -truncate both
        # replace an existing file, as far as the door's policy allows
        replace = self.config.allow_truncate and ("truncate" in r.options
                                                  or "overwrite" in r.options)
        latency, policy = self._file_class(session, r)
        target = cluster.pool_for_new() if cluster is not None and mode == "w" and not by_id \
            else None
        if target is not None and not cluster.is_local(target):
            session.ready(cluster.remote_open(session, target, mode, path, subject, create_mode,
                                              replace, self._overwrite_hint(r)), True)
            return

        def upload(p):
            return pool.open_write(p, subject, create_mode, replace=replace,
                                   copy_existing=(mode == "rw"),
                                   overwrite_hint=self._overwrite_hint(r),
                                   access_latency=latency, retention_policy=policy)

        def start(up):
            size = up.old.size if (mode == "rw" and up.old is not None) else 0
            self._when_admitted(session, lambda: session.ready(
                self._transfer(session, upload=up, size=size, label="%s %s" % (mode, path)),
                passive), up.abort)

        if cluster is not None and mode == "rw":
            def existing():
                """The file a read-write open names, or None if there is none yet."""
                try:
                    found = namespace.get(r.args[0]) if by_id else namespace.lookup(path, subject)
                except NotFound:
                    return None
                if isinstance(found, defer.Deferred):
                    found.addErrback(lambda f: f.trap(NotFound) and None)
                return found

            def placed(entry):
                if entry is not None and not cluster.is_local(entry.pool):
                    # its data is on another node's pool: that pool serves the open
                    session.ready(cluster.remote_open(
                        session, entry.pool, "rw", entry.path, subject, create_mode, replace,
                        self._overwrite_hint(r)), True)
                else:
                    session.follow(resolved(upload), start)
            session.follow(existing, placed)
            return
        session.follow(resolved(upload), start)

    def _admit_size(self, r: Request):
        """Refuse a write whose announced size (-alloc-size) cannot fit, before data moves."""
        size = r.int_option("alloc-size", -1)
        if size < 0:
            return
        limit = self.config.max_file_size
        if limit is not None and size > limit:
            raise DcapError(RC_DISK_IO, "No space left on device: %d bytes announced, this "
                            "door stores files of at most %d bytes (--max-file-size)"
                            % (size, limit), "ENOSPC")
        free = self.factory.pool.free_space()
        if size > free:
            raise DcapError(RC_DISK_IO, "No space left on device: %d bytes announced, the "
                            "pool has %d bytes free" % (size, free), "ENOSPC")

    def _queue_name(self, session: Session, r: Request) -> str:
        """The mover queue an open waits in: the one it names, else the default queue."""
        asked = r.option("io-queue") or None
        queue = self.factory.io_queues.queue_for(asked)
        if asked is not None and queue.name != asked:
            log.info("transfer {tid}: no io queue {name}: the {default} queue takes it",
                     tid=session.tid, name=asked, default=DEFAULT_QUEUE)
        return queue.name

    def _when_admitted(self, session: Session, go, abandon=None):
        """go() once the open has a place in its mover queue (at once when there is room).

        While it waits the session is `queued`; when the session ends first
        its wait is cancelled and abandon() (if any) drops what was prepared.
        """
        queue = self.factory.io_queues.queue_for(session.queue_name)
        wait = queue.acquire()
        if not wait.called:
            log.info("transfer {tid}: waiting in io queue {name} ({running} of {limit} running)",
                     tid=session.tid, name=queue.name, running=queue.running, limit=queue.limit)

        def admitted(slot):
            session.admitted(slot)
            if session.state() == "resolving":
                go()
            elif abandon is not None:
                abandon()

        def cancelled(failure):
            failure.trap(defer.CancelledError)
            if abandon is not None:
                abandon()

        session.queue(wait)
        wait.addCallbacks(admitted, cancelled).addErrback(session.error)

    def _file_class(self, session: Session, r: Request):
        """(access latency, retention policy) a new file records, as the door allows.

        Like dCache's door, a value the door does not allow or does not know
        is ignored; the log says so.
        """
        chosen = []
        for key, allowed, parse in (
                ("access-latency", self.config.allow_access_latency, retention.access_latency),
                ("retention-policy", self.config.allow_retention_policy,
                 retention.retention_policy)):
            text = r.option(key)
            value = parse(text) if allowed else None
            if text is not None and value is None:
                log.info("transfer {tid}: -{key}={value} ignored ({why})", tid=session.tid,
                         key=key, value=text, why="unknown value" if allowed else
                         "not allowed by this door: --allow-%s" % (key,))
            chosen.append(value)
        return tuple(chosen)

    def _overwrite_hint(self, r: Request) -> str:
        """How a client whose write onto an existing file was refused can overwrite it."""
        if not self.config.allow_truncate:
            return "this door does not overwrite files (its --allow-truncate option allows it)"
        return "the client did not ask to replace it (-truncate or -overwrite)"

    def _readable(self, session: Session, entry, passive: bool):
        """The client may read entry: start its mover, staging the file first if needed."""
        pool = self.factory.pool
        if pool.is_cached(entry):
            self._read(session, entry, passive)
            return
        wait = pool.stage(entry)
        self.factory.counters.stage_waits += 1
        session.stage(wait)
        wait.addCallback(lambda fresh: self._read(session, fresh, passive))
        wait.addErrback(session.error)

    def _read(self, session: Session, entry, passive: bool):
        def go():
            source = self.factory.pool.open_read(entry)
            session.entry = entry
            session.ready(self._transfer(session, source=source, size=entry.size,
                                         label="r %s" % (entry.path,)), passive)
        self._when_admitted(session, go)

    def _transfer(self, session: Session, label: str, **what) -> Transfer:
        """A transfer for session with the buffers and deadline watch its policy gives."""
        policy = self.factory.policy
        return Transfer(session.sid, label="#%d %s" % (session.tid, label), policy=policy,
                        buffers=policy.buffers_for_open(session.options), watch=session.watch,
                        **what)

    def do_opendir(self, r: Request):
        path = self.path(r)
        self._admit_open()
        tid = self.factory.new_transfer_id()
        session = self._session(r, "opendir", path, tid=tid, answers=False)

        def listed(entries):
            text = listing_text(entries)
            session.ready(self._transfer(session, source=BytesIO(text), size=len(text),
                                         label="list %s" % (path,)), True)

        session.follow(lambda: self.factory.namespace.listdir(path, self.subject(r)), listed)

    def start_mover(self, session: Session, passive: bool) -> defer.Deferred:
        """Listen for the mover or connect back to the client.

        The Deferred is the pending step the session cancels when it ends
        first (a connect-back attempt stops there and then).
        """
        if getattr(session.transfer, "remote", False):
            return session.transfer.start(session)  # another node's pool serves it (cluster.py)
        if passive:
            return self._listen(session)
        session.resolved = self.factory.reactor.seconds()
        return self._connect_back(session)

    def _listen(self, session: Session) -> defer.Deferred:
        transfer = session.transfer
        challenge = new_challenge()
        local = self.transport.getHost().host
        interface = "" if self.config.connect_host else local
        host = self.config.connect_host or local
        d = defer.maybeDeferred(self.factory.expect_mover, interface, transfer, challenge,
                                session.mover_connected)

        def listening(port):
            session.resolved = self.factory.reactor.seconds()
            session.listening(port, control.connect(session.sid, session.cid, host,
                                                    port.getHost().port, challenge))

        def failed(f):
            if f.check(defer.CancelledError):
                return
            if f.check(PortRangeExhausted):
                log.warn("transfer {tid}: {error}", tid=session.tid, error=f.getErrorMessage())
            else:
                log.failure("transfer {tid}: cannot open the data port", f, tid=session.tid)
            session.failed(TransferError(RC_INTERNAL, "cannot open a data port: %s"
                                         % (f.getErrorMessage(),)))

        d.addCallbacks(listening, failed)
        return d

    def _connect_back(self, session: Session) -> Optional[defer.Deferred]:
        r = session.request
        named = r.args[2] if len(r.args) > 2 else ""
        try:
            port = int(r.args[3])
        except (IndexError, ValueError):
            session.failed(TransferError(RC_INVALID_ARGS, "open needs a callback port", "EINVAL"))
            return None
        if not 0 < port < 65536:
            session.failed(TransferError(RC_INVALID_ARGS, "callback port %d is out of range"
                                         % (port,), "EINVAL"))
            return None
        # Only ever the control connection's peer, whatever host the client names:
        # the door delivers no data to, and probes no port of, a third host.
        host = self.transport.getPeer().host
        if _is_ip(named) and named != host:
            log.info("transfer {tid}: client named {named} for its callback; connecting to "
                     "its own address {host}", tid=session.tid, named=named, host=host)
        channel = DataChannel(transfer=session.transfer)
        d = connect_to_client(self.factory.reactor, host, port, channel)

        def connected(_):
            log.info("transfer {tid}: mover connected back to {host}:{port}", tid=session.tid,
                     host=host, port=port)
            session.mover_connected()

        def failed(f):
            if f.check(defer.CancelledError):
                return
            log.info("transfer {tid}: cannot connect back to {host}:{port}: {error}",
                     tid=session.tid, host=host, port=port, error=f.getErrorMessage())
            session.failed(TransferError(RC_INTERNAL, "cannot connect back to the client's "
                                         "callback port %d" % (port,)))

        d.addCallbacks(connected, failed)
        return d

    # -- end ---------------------------------------------------------------

    def shut_down(self):
        """The door is stopping: tell the client, then close the connection."""
        self.stopping = True
        self.send(SHUTDOWN_LINE)
        self.closed = True
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed = True
        if self.gate is not None:
            self.gate.lost()
        self.factory.connections.discard(self)
        why = DOOR_STOPPING if self.stopping else CLIENT_GONE
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            session.control_lost(why)
        if sessions:
            log.info("control connection from {peer} closed: {n} session(s) ended ({why})",
                     peer=self.peer, n=len(sessions), why=why)
        self.factory.session_ended()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DoorFactory(Factory):
    """What the control connections of one door share: storage, settings, and its stop."""

    protocol = DoorProtocol
    noisy = False  # the door logs its own start and stop, without object reprs

    #: Seconds closing connections get to flush their last lines before they are cut.
    CLOSE_WAIT = 5.0

    def __init__(self, pool, config: DoorConfig, reactor=None, policy=None, pool_name=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.pool = None
        self.namespace = None
        if pool is not None:
            self.attach(pool)
        self.config = config
        self.reactor = reactor
        self.policy = DoorPolicy(policy, reactor, getattr(pool, "name", None) or pool_name)
        #: Door+pool nodes sharing a PostgreSQL namespace (cluster.Cluster), or None.
        self.cluster = None
        self.io_queues = IoQueues(dict(config.io_queues))
        self.passwords = PasswordFile(config.passwd) if config.passwd else None
        self.connections: Set[DoorProtocol] = set()
        self.stopping = False
        self._transfer_ids = itertools.count(1)
        #: What the metrics read; and the transfer log (a TransferLog) or None.
        self.counters = accounting.DoorCounters()
        #: Warnings a hostile peer can repeat: the first few a minute in full, then a count.
        self.warnings = RateLimitedLogs(log, reactor)
        self.transfer_log = None
        self._grace = None
        self._cut = None
        self._closed: Optional[defer.Deferred] = None

    def attach(self, pool):
        """The storage the door serves (given later when it is opened after a privilege drop)."""
        self.pool = pool
        self.namespace = pool.namespace

    def new_transfer_id(self) -> int:
        """A number naming one transfer in every log line about it."""
        return next(self._transfer_ids)

    def transfer_finished(self, session: Session, client: str, result: str, error=None):
        """Count an ended open and write its record to the transfer log."""
        if session.command != "open":
            return
        record = accounting.transfer_record(session, client, result, error,
                                            self.reactor.seconds())
        self.counters.finished(record)
        if self.transfer_log is not None:
            self.transfer_log.write(record)

    def open_sessions(self):
        """The opens going on now, on every control connection (for the metrics)."""
        return [s for c in self.connections for s in c.sessions.values() if s.command == "open"]

    def check_password(self, user: str, password: str):
        """The Account of user if password is right, else None (a Deferred off the reactor)."""
        if self.passwords is None:
            raise LookupError("this door has no password file (--passwd)")
        return getattr(self.pool, "workers", INLINE).disk(self.passwords.check, user, password)

    def has_disk_copy(self, entry) -> bool:
        """What `check` asks: does a disk copy of entry exist?

        Strictly (a pool that is up holds it) or from the namespace, as the
        door's -check option says.
        """
        return self.policy.has_disk_copy(entry, [self.pool])

    def expect_mover(self, interface: str, transfer, challenge: str, on_accept):
        """Let transfer wait on the data port of interface for the client presenting challenge."""
        return self.policy.expect_mover(self.reactor, interface, transfer, challenge, on_accept)

    # -- stopping ------------------------------------------------------------

    def live_sessions(self) -> int:
        return sum(len(c.sessions) for c in self.connections)

    def drain(self, grace: float) -> defer.Deferred:
        """Stop gently; fires once every control connection is closed.

        New opens are refused from now on.  Running sessions get ``grace``
        seconds to end; then (or as soon as none is left) every client still
        connected is told ``0 0 server shutdown`` and its connection closed,
        which ends what is still running.
        """
        if self._closed is not None:
            return self._closed
        self.stopping = True
        self._closed = defer.Deferred()
        live = self.live_sessions()
        if live:
            log.info("door stopping: refusing new opens; {n} session(s) running get {grace} s to end",
                     n=live, grace=grace)
        self._grace = self.reactor.callLater(grace, self._grace_over)
        self.session_ended()
        return self._closed

    def session_ended(self):
        """A session or connection ended: a stopping door may be done waiting."""
        if not self.stopping or self._closed is None:
            return
        if self._grace is not None and self.live_sessions() == 0:
            self._grace_over()
        elif self._grace is None and not self.connections and not self._closed.called:
            if self._cut is not None and self._cut.active():
                self._cut.cancel()
            self._closed.callback(None)

    def _grace_over(self):
        grace, self._grace = self._grace, None
        if grace is None:
            return
        if grace.active():
            grace.cancel()
        live = self.live_sessions()
        if live:
            log.info("door stopping: grace over, ending {n} session(s)", n=live)
        if self.connections:
            log.info("door stopping: telling {n} client(s) it shuts down", n=len(self.connections))
        for connection in list(self.connections):
            connection.shut_down()
        self._cut = self.reactor.callLater(self.CLOSE_WAIT, self._cut_stragglers)
        self.session_ended()

    def _cut_stragglers(self):
        self._cut = None
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abortConnection()
