"""The door's side of dcap's ssl tunnel: TLS on the control line and the login line.

dcap's ssl tunnel plugin (``libsslTunnel.so``, chosen by an ``ssl`` URL
prefix, ``ssldcap://host:port/path``, or by ``DCACHE_IO_TUNNEL``) wraps the
control connection, and only the control connection, in TLS.  Right after the
handshake, before the usual ``hello``, it sends one line::

    Auth Protocol V#1.0 auth=USER:PASSWORD\\n

and then the ``hello`` at once, without waiting for an answer; the client
reads no reply to the credentials.  The data connections stay plain TCP.

`LoginGate` is the state of a control connection before its user is known:
it recognises that first line, has the password checked off the reactor
thread, holds the lines that arrive meanwhile and hands them on, in order,
once the user is known.  A connection whose first line is not a login
stays anonymous.  A refused login closes the connection after a pause;
libdcap then reports that the door did not answer its hello.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional

from twisted.internet import defer, ssl
from twisted.python.failure import Failure

from distcache.dcap.auth import Account
from distcache.dcap.control import ProtocolError

#: What the ssl tunnel writes before the user name.
AUTH_PREFIX = b"Auth Protocol V#1.0 auth="

#: Seconds a refused login waits before its connection is closed (slows guessing).
REFUSAL_DELAY = 1.0

#: Control lines held while a password is checked (the client sends one, its hello).
MAX_WAITING = 16


@dataclass(frozen=True)
class Credentials:
    """A user name and password as the client sent them."""

    user: str
    password: str = field(repr=False)


def parse_auth_line(line: bytes) -> Optional[Credentials]:
    """The credentials of a login line, or None for any other line.

    The user name ends at the first colon; the password is the rest of
    the line, colons included.
    """
    if not line.startswith(AUTH_PREFIX):
        return None
    user, colon, password = line[len(AUTH_PREFIX):].partition(b":")
    if not colon:
        raise ProtocolError("login line without a colon between user and password")
    try:
        return Credentials(user.decode("utf-8"), password.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("login line is not UTF-8") from None


def tls_options(cert_path: str, key_path: Optional[str] = None) -> ssl.CertificateOptions:
    """A TLS server context from PEM files (the certificate file may hold its chain and key)."""
    from distcache.mtls import CredentialsError, _pem_blocks, _read
    from OpenSSL import SSL

    key_path = key_path or cert_path
    cert_pem = _read(cert_path, "certificate")
    key_pem = cert_pem if key_path == cert_path else _read(key_path, "private key")
    certs = _pem_blocks(cert_pem, b"CERTIFICATE")
    if not certs:
        raise CredentialsError("%s holds no PEM certificate" % (cert_path,))
    try:
        server = ssl.PrivateCertificate.loadPEM(certs[0] + key_pem)
        chain = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original, certificate=server.original,
            extraCertChain=chain, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        options.getContext()  # load now, so a bad pair fails at start-up
        return options
    except (SSL.Error, ValueError) as e:
        raise CredentialsError("%s / %s do not make a TLS server: %s"
                               % (cert_path, key_path, e)) from None


# -- the gate's states and inputs --------------------------------------------

FIRST = "first"        # nothing received yet
CHECKING = "checking"  # a password is being checked; lines wait
OPEN = "open"          # the user is known (or anonymous); lines pass
REFUSED = "refused"    # login refused or the connection is gone; lines are dropped


class LoginGate:
    """The control connection before its user is known (see the module docstring).

    check(user, password) answers a Deferred of the Account or None;
    deliver(line) hands a control line on; login(account) and refused(reason)
    report the outcome (refused when the connection should close, which the
    gate asks for through close() after the refusal delay).
    """

    def __init__(self, secure: bool, check: Callable, deliver: Callable, login: Callable,
                 refused: Callable, close: Callable, clock, delay: float = REFUSAL_DELAY,
                 max_waiting: int = MAX_WAITING):
        self.secure = secure
        self._check, self._deliver, self._login = check, deliver, login
        self._refused, self._close = refused, close
        self.clock = clock
        self.delay = delay
        self.max_waiting = max_waiting
        self.state = FIRST
        self.waiting: List[bytes] = []
        self._pending: Optional[defer.Deferred] = None
        self._closing = None

    # -- inputs ------------------------------------------------------------

    def line(self, line: bytes):
        """A control line from the client."""
        if self.state == REFUSED:
            return
        if self.state == OPEN and not line.startswith(AUTH_PREFIX):
            self._deliver(line)
            return
        try:
            credentials = parse_auth_line(line)
        except ProtocolError as e:
            self._refuse(str(e), at_once=True)
            return
        _TABLE[self.state, credentials is not None](self, line, credentials)

    def lost(self):
        """The connection is gone: nothing more happens."""
        self.state = REFUSED
        self.waiting = []
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None

    # -- transitions ---------------------------------------------------------

    def _first_plain(self, line, _):
        self.state = OPEN
        self._deliver(line)

    def _first_login(self, line, credentials: Credentials):
        if not self.secure:
            self._refuse("a login needs TLS on the control connection", at_once=True)
            return
        self.state = CHECKING
        d = defer.maybeDeferred(self._check, credentials.user, credentials.password)
        self._pending = d
        d.addCallbacks(lambda account: self._checked(credentials.user, account), self._broken)
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else f)

    def _hold(self, line, _):
        if len(self.waiting) >= self.max_waiting:
            self._refuse("more than %d lines before the login was checked" % (self.max_waiting,),
                         at_once=True)
            return
        self.waiting.append(line)

    def _late_login(self, line, _):
        self._refuse("a login line after the first line", at_once=True)

    def _checked(self, user: str, account: Optional[Account]):
        self._pending = None
        if self.state != CHECKING:
            return
        if account is None:
            self._refuse("user %s: wrong user name or password" % (user,))
            return
        self.state = OPEN
        self._login(account)
        waiting, self.waiting = self.waiting, []
        for line in waiting:
            if self.state != OPEN:
                break
            self.line(line)

    def _broken(self, failure: Failure):
        self._pending = None
        if failure.check(defer.CancelledError) or self.state != CHECKING:
            return None
        self._refuse("cannot check the password: %s" % (failure.getErrorMessage(),))
        return None

    def _refuse(self, reason: str, at_once: bool = False):
        self.state = REFUSED
        self.waiting = []
        self._refused(reason)
        if at_once or not self.delay:
            self._close()
        else:
            self._closing = self.clock.callLater(self.delay, self._closed_later)

    def _closed_later(self):
        self._closing = None
        self._close()


#: (state, is a login line) -> transition; every state answers both kinds of line.
_TABLE = {
    (FIRST, False): LoginGate._first_plain,
    (FIRST, True): LoginGate._first_login,
    (CHECKING, False): LoginGate._hold,
    (CHECKING, True): LoginGate._late_login,
    (OPEN, True): LoginGate._late_login,
}
