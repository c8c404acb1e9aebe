"""A door session's life, as one state machine.

A session is one request on a control connection that is not answered at
once: an ``open`` or ``opendir`` (which lives until its mover is done), or a
namespace request whose store answers later.  The ``upon`` table at the end
of `Session` is the specification: every input is handled in every state,
so a late answer (a stage that completes after the client left, a mover that
ends after the deadline answered) meets a state that knows what to do with
it, and nothing outside the machine guards against it.

States::

    resolving       the namespace (or pool) is answering
    staging         the file is being recalled from tape
    awaiting_mover  the mover listens, or connects back, for the data connection
    transferring    the data connection is up
    done            answered; later inputs are dropped (their leftovers closed)

The session's control connection (`door`) provides four things: ``send``
(a reply line), ``session_ended`` (forget the session id),
``start_mover`` (listen or connect back; a Deferred that the session may
cancel) and ``transfer_finished`` (how an open ended, for the door's
counters and transfer log; told by the output that logs the outcome).
"""

from __future__ import annotations

from typing import Optional

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from distcache.dcap import accounting, control
from distcache.dcap.errors import RC_INTERNAL, RC_TIMEOUT, DcapError
from distcache.dcap.opentimeout import TIMEOUT_MESSAGE

log = Logger()

#: Why a transfer ended, as the log says it.
CLIENT_GONE = "client gone"
DOOR_STOPPING = "door stopping"
READ_INTERRUPTED = "open deadline passed during the read"


def error_of(failure: Failure):
    """The rc/message/posix carrier for a failure (DcapError, TransferError or other)."""
    e = failure.value
    if hasattr(e, "rc") and hasattr(e, "message"):
        return e
    log.failure("request failed", failure)
    return DcapError(RC_INTERNAL, "internalError : %s" % (e,))


class Session:
    """One live request; its inputs are the methods without a leading underscore."""

    _machine = MethodicalMachine()

    def __init__(self, door, sid: int, cid: int, command: str, path: str = "",
                 tid: Optional[int] = None, answers: bool = True, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.door = door
        self.clock = clock
        #: When the session entered its current state (clock seconds), for `status`.
        self.since = clock.seconds()
        self.sid = sid
        self.cid = cid
        self.command = command
        self.path = path
        #: The door-wide transfer id that names this session in the log.
        self.tid = tid
        #: Whether the mover's outcome is answered (`open`: yes; `opendir`: no).
        self.answers = answers
        self.watch = None
        self.transfer = None
        self.listener = None
        self.pending: Optional[defer.Deferred] = None
        #: The request line that opened the session, and its options.
        self.request = None
        self.options = {}
        #: How the session was answered: None (ok, or not yet), else the error sent.
        self.outcome = None

    @property
    def name(self) -> str:
        if self.tid is None:
            return "request %d %s" % (self.sid, self.command)
        return "transfer %d" % (self.tid,)

    # -- driving the session from the door ----------------------------------

    def follow(self, step, then) -> None:
        """Run ``step()`` (a store call) and hand its answer to ``then``.

        The answer may come now or in a Deferred; an error of either kind, or
        one raised by ``then``, fails the session.  A pending answer is
        cancelled when the session ends first.
        """
        try:
            result = step()
        except Exception:
            self.error(Failure())
            return
        if isinstance(result, defer.Deferred):
            self.pending = result
            result.addCallback(then).addErrback(self.error)
            return
        try:
            then(result)
        except Exception:
            self.error(Failure())

    def error(self, failure: Failure) -> None:
        """A step failed: fail the session (a cancelled step is its own doing)."""
        if failure.check(defer.CancelledError):
            return
        self.failed(error_of(failure))

    def transfer_ended(self, error) -> None:
        """The Transfer's outcome callback (None on success)."""
        self.mover_finished(error)

    def failed_write(self) -> bool:
        """True for a write whose transfer started and then was answered with an error."""
        request = self.request
        return (self.command == "open" and self.transfer is not None
                and self.outcome is not None and request is not None
                and len(request.args) > 1 and request.args[1] in ("w", "rw"))

    def waiting(self) -> bool:
        """True until the data connection is up (or the session has ended)."""
        return self.state() in ("resolving", "staging", "awaiting_mover")

    def _ended(self, result: str, error=None) -> None:
        """How an open or opendir ended, for the door's counters and transfer log."""
        if self.tid is not None:
            self.door.transfer_finished(self, result, error)

    def status_text(self, uid: int, pid: str) -> str:
        """What `status` says of this session, in dCache's form:
        ``[sid][uid][pid] state(seconds in it)``."""
        seconds = int(max(0.0, self.clock.seconds() - self.since))
        return "[%d][%d][%s] %s(%d)" % (self.sid, uid, pid, self.state(), seconds)

    @_machine.serializer()
    def state(self, state):
        """The current state's name (for tests and logs)."""
        return state

    # -- states ----------------------------------------------------------------

    @_machine.state(initial=True, serialized="resolving")
    def resolving(self):
        "The store is answering."

    @_machine.state(serialized="staging")
    def staging(self):
        "The file is being recalled from tape."

    @_machine.state(serialized="awaiting_mover")
    def awaiting_mover(self):
        "The mover waits for its data connection."

    @_machine.state(serialized="transferring")
    def transferring(self):
        "Data flows."

    @_machine.state(serialized="done")
    def done(self):
        "Answered and forgotten."

    # -- inputs ----------------------------------------------------------------

    @_machine.input()
    def answered(self):
        "The store answered a request whose reply is already sent."

    @_machine.input()
    def stage(self, wait):
        "The file must come from tape first; wait fires when it is on disk."

    @_machine.input()
    def ready(self, transfer, passive):
        "The transfer is set up: start its mover (passive: listen; else connect back)."

    @_machine.input()
    def listening(self, port, line):
        "The mover listens on port; line is the `connect` reply."

    @_machine.input()
    def mover_connected(self):
        "The data connection is up."

    @_machine.input()
    def mover_finished(self, error):
        "The transfer ended: error is None or carries rc, message, posix."

    @_machine.input()
    def failed(self, error):
        "The request cannot go on (store, stage or data port error)."

    @_machine.input()
    def deadline_waiting(self):
        "The open deadline passed while the open was still waiting."

    @_machine.input()
    def deadline_reading(self):
        "The open deadline passed while a read was flowing."

    @_machine.input()
    def control_lost(self, reason):
        "The control connection is gone (reason: client gone or door stopping)."

    # -- outputs ---------------------------------------------------------------

    @_machine.output()
    def _mark_stage(self, wait):
        self.since = self.clock.seconds()

    @_machine.output()
    def _mark_ready(self, transfer, passive):
        self.since = self.clock.seconds()

    @_machine.output()
    def _mark_connected(self):
        self.since = self.clock.seconds()

    @_machine.output()
    def _hold(self, wait):
        self.pending = wait

    @_machine.output()
    def _cancel_wait(self, wait):
        wait.cancel()

    @_machine.output()
    def _start_mover(self, transfer, passive):
        self.transfer = transfer
        self.pending = None
        transfer.outcome.addCallback(self.transfer_ended)
        self.pending = self.door.start_mover(self, passive)

    @_machine.output()
    def _keep_listener(self, port):
        self.pending = None
        self.listener = port

    @_machine.output()
    def _reply_connect(self, line):
        self.door.send(line)

    @_machine.output()
    def _stop_port(self, port):
        port.stopListening()

    @_machine.output()
    def _drop_transfer(self, transfer):
        transfer.kill("session already ended")

    @_machine.output()
    def _close_listener(self):
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stopListening()

    @_machine.output()
    def _cancel_pending(self):
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()

    @_machine.output()
    def _finish_watch(self):
        if self.watch is not None:
            self.watch.finished()

    @_machine.output()
    def _kill_failed(self, error):
        if self.transfer is not None:
            self.transfer.kill(error.message)

    @_machine.output()
    def _kill_timed_out(self):
        if self.transfer is not None:
            self.transfer.kill(TIMEOUT_MESSAGE)

    @_machine.output()
    def _kill_interrupted(self):
        if self.transfer is not None:
            self.transfer.kill(READ_INTERRUPTED)

    @_machine.output()
    def _kill_lost(self, reason):
        if self.transfer is not None:
            self.transfer.kill(reason)

    @_machine.output()
    def _reply_outcome(self, error):
        self.outcome = error
        if not self.answers:
            return
        if error is None:
            self.door.send(control.ok(self.sid, self.cid))
        else:
            self.door.send(control.failed(self.sid, self.cid, error.rc, error.message, error.posix))

    @_machine.output()
    def _reply_failed(self, error):
        self.outcome = error
        self.door.send(control.failed(self.sid, self.cid, error.rc, error.message, error.posix))

    @_machine.output()
    def _reply_timeout(self):
        self.outcome = DcapError(RC_TIMEOUT, TIMEOUT_MESSAGE)
        self.door.send(control.failed(self.sid, self.cid, RC_TIMEOUT, TIMEOUT_MESSAGE))

    @_machine.output()
    def _log_connected(self):
        if self.tid is not None:
            log.info("transfer {tid}: data connection up", tid=self.tid)

    @_machine.output()
    def _log_outcome(self, error):
        if self.tid is None:
            return
        t = self.transfer
        moved = "" if t is None else " (%d bytes in, %d bytes out)" % (t.bytes_in, t.bytes_out)
        if error is None:
            log.info("transfer {tid} ended: done{moved}", tid=self.tid, moved=moved)
        else:
            log.info("transfer {tid} ended: error {rc} {message}{moved}", tid=self.tid,
                     rc=error.rc, message=error.message, moved=moved)
        self._ended(accounting.OK if error is None else accounting.FAILED, error)

    @_machine.output()
    def _log_failed(self, error):
        log.info("{name} ended: {command} failed: {rc} {message}", name=self.name,
                 command=self.command, rc=error.rc, message=error.message)
        self._ended(accounting.FAILED, error)

    @_machine.output()
    def _log_timeout(self):
        log.info("{name} ended: open deadline passed while waiting (failed {rc} {message})",
                 name=self.name, rc=RC_TIMEOUT, message=TIMEOUT_MESSAGE)
        self._ended(accounting.TIMEOUT, DcapError(RC_TIMEOUT, TIMEOUT_MESSAGE))

    @_machine.output()
    def _log_interrupted(self):
        log.info("{name} ended: {why}", name=self.name, why=READ_INTERRUPTED)
        self._ended(accounting.INTERRUPTED)

    @_machine.output()
    def _log_lost(self, reason):
        if self.tid is not None:
            log.info("transfer {tid} ended: {why}", tid=self.tid, why=reason)
        self._ended(accounting.DOOR_STOPPING if reason == DOOR_STOPPING else accounting.CLIENT_GONE)

    @_machine.output()
    def _forget(self):
        self.door.session_ended(self)

    # -- the table ---------------------------------------------------------------

    _live = (resolving, staging, awaiting_mover, transferring)

    resolving.upon(answered, enter=done, outputs=[_finish_watch, _forget])
    resolving.upon(stage, enter=staging, outputs=[_mark_stage, _hold])
    for _s in (resolving, staging):
        _s.upon(ready, enter=awaiting_mover, outputs=[_mark_ready, _start_mover])
    for _s in (staging, awaiting_mover, transferring, done):
        _s.upon(answered, enter=_s, outputs=[])
    for _s in (staging, awaiting_mover, transferring, done):
        _s.upon(stage, enter=_s, outputs=[_cancel_wait])
    for _s in (awaiting_mover, transferring, done):
        _s.upon(ready, enter=_s, outputs=[_drop_transfer])

    awaiting_mover.upon(listening, enter=awaiting_mover, outputs=[_keep_listener, _reply_connect])
    for _s in (resolving, staging, transferring, done):
        _s.upon(listening, enter=_s, outputs=[_stop_port])

    awaiting_mover.upon(mover_connected, enter=transferring,
                        outputs=[_mark_connected, _close_listener, _log_connected])
    for _s in (resolving, staging, transferring, done):
        _s.upon(mover_connected, enter=_s, outputs=[])

    for _s in (awaiting_mover, transferring):
        _s.upon(mover_finished, enter=done,
                outputs=[_cancel_pending, _close_listener, _finish_watch, _log_outcome,
                         _reply_outcome, _forget])
    for _s in (resolving, staging, done):
        _s.upon(mover_finished, enter=_s, outputs=[])

    for _s in _live:
        _s.upon(failed, enter=done, outputs=[_cancel_pending, _close_listener, _finish_watch,
                                             _kill_failed, _log_failed, _reply_failed, _forget])
    done.upon(failed, enter=done, outputs=[])

    for _s in _live:
        _s.upon(deadline_waiting, enter=done,
                outputs=[_cancel_pending, _close_listener, _finish_watch, _kill_timed_out,
                         _log_timeout, _reply_timeout, _forget])
    done.upon(deadline_waiting, enter=done, outputs=[])

    # A read cut at its deadline gets no reply: dccp takes it for a network
    # failure, pings on the same session id, reopens and seeks back.
    for _s in _live:
        _s.upon(deadline_reading, enter=done,
                outputs=[_cancel_pending, _close_listener, _finish_watch, _kill_interrupted,
                         _log_interrupted, _forget])
    done.upon(deadline_reading, enter=done, outputs=[])

    for _s in _live:
        _s.upon(control_lost, enter=done,
                outputs=[_cancel_pending, _close_listener, _finish_watch, _kill_lost,
                         _log_lost, _forget])
    done.upon(control_lost, enter=done, outputs=[])
    del _s, _live
