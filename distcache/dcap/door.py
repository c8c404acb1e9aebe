"""The DCAP door: control connections, sessions, and the movers they start.

A `DoorProtocol` speaks the control lines of `control.py` with one client;
each request line is a session.  Namespace requests are answered at once;
an `open` (or `opendir`) keeps its session alive until its mover has
finished, so several sessions run side by side on one connection.  When
the control connection ends, every mover it started is killed and any
partial write is discarded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from io import BytesIO
from typing import Dict, Optional, Set, Tuple

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.basic import LineOnlyReceiver

from distcache.dcap import control
from distcache.dcap.control import BadURL, ProtocolError, Request
from distcache.dcap.doorpolicy import DoorPolicy
from distcache.dcap.errors import (
    RC_BAD_COMMAND, RC_INTERNAL, RC_INVALID_ARGS, RC_NOT_CACHED, RC_NOT_REGULAR,
    RC_TIMEOUT, DcapError, TransferError,
)
from distcache.dcap.portrange import PortRangeExhausted
from distcache.dcap.mover import (
    DataChannel, PassiveMoverFactory, Transfer,
    connect_to_client, new_challenge,
)
from distcache.dcap.namespace import Access, Subject, listing_text

log = Logger()


@dataclass
class DoorConfig:
    """The door's settings: plain data, so a service holding it can be pickled."""

    access: Access = Access.READONLY
    allow_truncate: bool = False
    connect_back: bool = False
    connect_host: Optional[str] = None
    client_version_min: Tuple[int, ...] = ()
    client_version_max: Tuple[int, ...] = ()


def parse_version_range(text: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """`min[:max]` with dotted versions (e.g. `2.47:2.47.99`) as tuples."""
    low, _, high = text.partition(":")

    def version(part: str) -> Tuple[int, ...]:
        part = part.strip()
        if not part:
            return ()
        return tuple(int(x) for x in part.split("."))

    return version(low), version(high)


@dataclass
class Session:
    """One live request on a control connection (an open or opendir).

    `watch` puts an open under its openTimeout (None when none is
    enforced): the door's keep-alive pass calls `DoorProtocol.expire_session`
    for an open still waiting at its deadline and `interrupt_read` for a
    read still flowing then.
    """

    sid: int
    cid: int
    command: str
    path: str
    watch: object = None
    transfer: Optional[Transfer] = None
    listener: object = None
    started: bool = False
    options: Dict[str, Optional[str]] = field(default_factory=dict)


class DoorProtocol(LineOnlyReceiver):
    """One client's control connection."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self):
        self.sessions: Dict[int, Session] = {}
        self.waiting: Set[int] = set()  # session ids whose store answer is pending
        self.welcomed = False
        self.uid = -1
        self.gid = -1
        self.closed = False

    @property
    def config(self) -> DoorConfig:
        return self.factory.config

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        log.info("control connection from {peer}", peer=self.peer)

    # -- framing ---------------------------------------------------------

    def lineLengthExceeded(self, line):
        self._violation("line longer than %d bytes" % (self.MAX_LENGTH,))

    def lineReceived(self, line: bytes):
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
            log.failure("request {command} of session {sid} failed", command=request.command,
                        sid=request.sid)
            self._send(control.failed(request.sid, request.cid, RC_INTERNAL,
                                      "internalError : request failed"))

    def _violation(self, reason: str):
        log.warn("protocol violation from {peer}: {reason}", peer=self.peer, reason=reason)
        self.transport.write(control.protocol_violation(reason))
        self.closed = True
        self.transport.loseConnection()

    def _send(self, line: bytes):
        if not self.closed and self.transport is not None:
            self.transport.write(line)

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
            self._send(control.failed(r.sid, r.cid, RC_BAD_COMMAND,
                                      "protocolViolation : Invalid command '%s'" % (r.command,)))
            return
        if r.command not in ("ping", "byebye", "status") and (r.sid in self.sessions or r.sid in self.waiting):
            self._send(control.failed(r.sid, r.cid, RC_INTERNAL,
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
            # a store that answers later: keep the id taken until it has
            self.waiting.add(r.sid)
            result.addErrback(self._late_failure, r)
            result.addBoth(lambda _: self.waiting.discard(r.sid))

    def _late_failure(self, failure, r: Request):
        if failure.check(DcapError):
            e = failure.value
            self._fail(r, e.rc, e.message, e.posix)
        else:
            log.failure("request {command} of session {sid} failed", failure,
                        command=r.command, sid=r.sid)
            self._send(control.failed(r.sid, r.cid, RC_INTERNAL, "internalError : request failed"))

    def _fail(self, r: Request, rc: int, message: str, posix: Optional[str] = None):
        log.info("session {sid} {command} failed: {rc} {message}", sid=r.sid, command=r.command,
                 rc=rc, message=message)
        self._send(control.failed(r.sid, r.cid, rc, message, posix))

    def subject(self, r: Request) -> Subject:
        uid = r.int_option("uid", self.uid)
        gid = r.int_option("gid", self.gid)
        return Subject(uid, gid, self.config.access)

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
        self.welcomed = True
        self._send(control.welcome(major, minor))

    def do_ping(self, r: Request):
        self._send(control.pong(r.sid, r.cid))

    def do_byebye(self, r: Request):
        self._send(control.byebye(r.sid, r.cid))
        self.closed = True
        self.transport.loseConnection()

    def do_status(self, r: Request):
        self._send(control.ok(r.sid, r.cid))

    # -- namespace requests ---------------------------------------------

    def do_stat(self, r: Request):
        def reply(e):
            self._send(control.stat_reply(
                r.sid, r.cid, size=e.size, uid=e.uid, gid=e.gid, atime=e.atime, mtime=e.mtime,
                ctime=e.ctime, kind="dir" if e.is_dir else "file", mode=e.mode, ino=e.ino,
                nlink=2 if e.is_dir else 1))
        return _then(self.factory.namespace.lookup(self.path(r), self.subject(r)), reply)

    do_lstat = do_stat

    def do_mkdir(self, r: Request):
        mode = control.decode_mode(r.option("mode"), 0o755) & 0o7777
        return self._ok_after(self.factory.namespace.mkdir(self.path(r), self.subject(r), mode), r)

    def do_rmdir(self, r: Request):
        return self._ok_after(self.factory.namespace.rmdir(self.path(r), self.subject(r)), r)

    def do_unlink(self, r: Request):
        return self._ok_after(self.factory.pool.unlink(self.path(r), self.subject(r)), r)

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

        d = defer.maybeDeferred(self.factory.namespace.lookup, self.path(r), self.subject(r))
        d.addErrback(missing)
        d.addCallback(judge)
        return d

    def do_stage(self, r: Request):
        def start(entry):
            if not entry.is_file:
                raise DcapError(RC_NOT_REGULAR, "path is not a regular file", "EINVAL")
            d = self.factory.pool.stage(entry)
            d.addErrback(lambda f: log.failure("staging {path} failed", f, path=entry.path))
            self._ok(r)
        return _then(self.factory.namespace.lookup(self.path(r), self.subject(r)), start)

    def _ok_after(self, result, r: Request):
        """`ok` once result (a value, or a Deferred from a remote store) is in."""
        return _then(result, lambda _: self._ok(r))

    def _ok(self, r: Request):
        self._send(control.ok(r.sid, r.cid))

    # -- transfers -------------------------------------------------------

    def do_open(self, r: Request):
        path = self.path(r)
        if len(r.args) < 2 or r.args[1] not in ("r", "w", "rw"):
            raise DcapError(RC_INVALID_ARGS, "open needs a mode of r, w or rw", "EINVAL")
        mode = r.args[1]
        subject = self.subject(r)
        pool = self.factory.pool
        session = Session(r.sid, r.cid, "open", path, options=dict(r.options))
        log.info("session {sid} open {mode} {path} {options}", sid=r.sid, mode=mode, path=path,
                 options=" ".join("-%s" % k if v is None else "-%s=%s" % (k, v) for k, v in r.extras))
        if mode == "r":
            return _then(self.factory.namespace.open_read(path, subject),
                         lambda entry: self._open_readable(r, session, entry))
        create_mode = control.decode_mode(r.option("mode"), 0o644) & 0o7777
        replace = self.config.allow_truncate and "truncate" in r.options
        return _then(pool.open_write(path, subject, create_mode, replace=replace,
                                     copy_existing=(mode == "rw"),
                                     overwrite_hint=self._overwrite_hint(r)),
                     lambda upload: self._open_writable(r, session, mode, path, upload))

    def _open_writable(self, r: Request, session: Session, mode: str, path: str, upload):
        if self.closed:
            upload.abort()
            return
        size = upload.old.size if (mode == "rw" and upload.old is not None) else 0
        transfer = Transfer(r.sid, upload=upload, size=size, label="%s %s" % (mode, path))
        self._watch(r, session)
        self.sessions[r.sid] = session
        self._start_mover(r, session, transfer)

    def _overwrite_hint(self, r: Request) -> str:
        """How a client whose write onto an existing file was refused can overwrite it."""
        if not self.config.allow_truncate:
            return "this door does not overwrite files (its --allow-truncate option allows it)"
        return "the client did not ask to truncate (-truncate)"

    def _watch(self, r: Request, session: Session):
        """Put an accepted open under its openTimeout (client's -timeout first)."""
        session.watch = self.factory.policy.watch_open(
            r.sid, r.option("timeout"),
            lambda: self.expire_session(r.sid),
            lambda: self.interrupt_read(r.sid))

    def _open_readable(self, r: Request, session: Session, entry):
        """The client may read entry: start its mover, staging it first if needed."""
        self._watch(r, session)
        self.sessions[r.sid] = session
        if self.factory.pool.is_cached(entry):
            try:
                self._open_read(r, session, entry)
            except Exception:
                self._open_failed(Failure(), r, session)
        else:
            d = self.factory.pool.stage(entry)
            d.addCallback(lambda fresh: self._open_read(r, session, fresh))
            d.addErrback(self._open_failed, r, session)

    def _open_read(self, r: Request, session: Session, entry):
        if self.sessions.get(r.sid) is not session:
            return
        source = self.factory.pool.open_read(entry)
        transfer = Transfer(r.sid, source=source, size=entry.size, label="r %s" % (entry.path,))
        self._start_mover(r, session, transfer)

    def _open_failed(self, failure, r: Request, session: Session):
        if session.watch is not None:
            session.watch.finished()
        if self.sessions.get(r.sid) is not session:
            return None
        del self.sessions[r.sid]
        e = failure.value
        if isinstance(e, DcapError):
            self._fail(r, e.rc, e.message, e.posix)
        else:
            log.failure("open of session {sid} failed", failure, sid=r.sid)
            self._fail(r, RC_INTERNAL, "internalError : %s" % (e,))
        return None

    def do_opendir(self, r: Request):
        path = self.path(r)
        return _then(self.factory.namespace.listdir(path, self.subject(r)),
                     lambda entries: self._list(r, path, entries))

    def _list(self, r: Request, path: str, entries):
        text = listing_text(entries)
        session = Session(r.sid, r.cid, "opendir", path)
        self.sessions[r.sid] = session
        transfer = Transfer(r.sid, source=BytesIO(text), size=len(text), label="list %s" % (path,))
        self._start_mover(r, session, transfer, passive=True)

    def _start_mover(self, r: Request, session: Session, transfer: Transfer, passive: Optional[bool] = None):
        session.transfer = transfer
        policy = self.factory.policy
        transfer.policy = policy
        transfer.buffers = policy.buffers_for_open(session.options)
        transfer.block_size = transfer.buffers.io
        transfer.watch = session.watch
        transfer.finished.addCallback(self._transfer_finished, r, session)
        if passive is None:
            passive = "passive" in r.options or not self.config.connect_back
        if passive:
            self._listen(r, session, transfer)
        else:
            self._connect_back(r, session, transfer)

    def _listen(self, r: Request, session: Session, transfer: Transfer):
        challenge = new_challenge()
        local = self.transport.getHost().host
        interface = "" if self.config.connect_host else local
        host = self.config.connect_host or local

        def accepted():
            session.started = True
            self._close_listener(session)

        factory = PassiveMoverFactory(transfer, challenge, accepted)
        d = defer.maybeDeferred(self.factory.listen_for_mover, interface, factory)

        def listening(port):
            if transfer.finished.called:
                port.stopListening()
                return
            session.listener = port
            self._send(control.connect(r.sid, r.cid, host, port.getHost().port, challenge))

        def failed(f):
            if f.check(PortRangeExhausted):
                log.warn("session {sid}: {error}", sid=r.sid, error=f.getErrorMessage())
            else:
                log.failure("cannot listen for the mover of session {sid}", f, sid=r.sid)
            transfer.finish(TransferError(RC_INTERNAL, "cannot open a data port: %s" % (f.getErrorMessage(),)))

        d.addCallbacks(listening, failed)

    def _connect_back(self, r: Request, session: Session, transfer: Transfer):
        host = r.args[2] if len(r.args) > 2 else ""
        try:
            port = int(r.args[3])
        except (IndexError, ValueError):
            transfer.finish(TransferError(RC_INVALID_ARGS, "open needs a callback port", "EINVAL"))
            return
        if not _is_ip(host):
            host = self.peer.host
        channel = DataChannel(transfer=transfer)
        d = connect_to_client(self.factory.reactor, host, port, channel)

        def connected(_):
            session.started = True
            log.info("mover of session {sid} connected back to {host}:{port}", sid=r.sid, host=host, port=port)

        def failed(f):
            transfer.finish(TransferError(RC_INTERNAL, "cannot connect to the client at %s:%d: %s"
                                          % (host, port, f.getErrorMessage())))

        d.addCallbacks(connected, failed)

    def _transfer_finished(self, error: Optional[TransferError], r: Request, session: Session):
        self._close_listener(session)
        if session.watch is not None:
            session.watch.finished()
        if self.sessions.get(r.sid) is not session:
            return None  # already answered (expired, or the connection is gone)
        del self.sessions[r.sid]
        if session.command == "opendir":
            return None
        if error is None:
            self._ok(r)
        else:
            self._fail(r, error.rc, error.message, error.posix)
        return None

    def _close_listener(self, session: Session):
        if session.listener is not None:
            listener, session.listener = session.listener, None
            listener.stopListening()

    def expire_session(self, sid: int, reason: str = "User timeout canceled session"):
        """End a session whose deadline passed: `failed 112`, mover killed."""
        session = self.sessions.get(sid)
        if session is None:
            return
        log.info("session {sid} expired: {reason}", sid=sid, reason=reason)
        del self.sessions[sid]
        self._close_listener(session)
        if session.transfer is not None:
            session.transfer.kill(reason)
        self._send(control.failed(sid, session.cid, RC_TIMEOUT, reason))

    def interrupt_read(self, sid: int):
        """Cut a read still flowing at its open deadline, without a reply.

        The real dccp cannot tell this from a network failure: it pings the
        door on the same session id, opens the file again and seeks back.
        A `failed` reply here would make that ping fail and force a new
        control connection, so the session just ends.
        """
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        self._close_listener(session)
        if session.transfer is not None:
            session.transfer.kill("open deadline passed during the read")

    # -- end ---------------------------------------------------------------

    def connectionLost(self, reason):
        self.closed = True
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            self._close_listener(session)
            if session.transfer is not None:
                session.transfer.kill("control connection closed")
        if sessions:
            log.info("control connection from {peer} closed: {n} session(s) killed",
                     peer=self.peer, n=len(sessions))


def _then(result, fn):
    """fn(result) now when the answer is in hand; after it when it is a Deferred.

    The local namespace answers at once (no Deferred per request); a
    remote one may return Deferreds, and the door waits for them.
    """
    if isinstance(result, defer.Deferred):
        return result.addCallback(fn)
    return fn(result)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DoorFactory(Factory):
    """What the control connections of one door share: storage and settings."""

    protocol = DoorProtocol

    def __init__(self, pool, config: DoorConfig, reactor=None, policy=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.pool = pool
        self.namespace = pool.namespace
        self.config = config
        self.reactor = reactor
        self.policy = DoorPolicy(policy, reactor, getattr(pool, "name", None))

    def has_disk_copy(self, entry) -> bool:
        """What `check` asks: does a disk copy of entry exist?

        Strictly (a pool that is up holds it) or from the namespace, as the
        door's -check option says.
        """
        return self.policy.has_disk_copy(entry, [self.pool])

    def listen_for_mover(self, interface: str, factory):
        """A listening port for a server-passive mover, inside the port range."""
        return self.policy.listen(self.reactor, interface, factory)
