"""Listening with TLS that demands a client certificate from a configured CA.

A distcache session is a TLS master secret, so the cache link must know who is
on the other end.  Twisted's ``ssl:`` server endpoint cannot require a client
certificate; ``mtls:`` can::

    mtls:PORT:interface=ADDR:certKey=CERT.pem:privateKey=KEY.pem:caCerts=CA.pem

``certKey`` is the server's certificate (chain first), ``privateKey`` its key
(``certKey`` defaults to it, as with ``ssl:``), ``caCerts`` a PEM file of the
CAs whose certificates clients must present.  A client without one, or with one
from another CA, fails the handshake before a byte reaches the cache, and the
refusal is logged (rate-limited).  SIGHUP reloads the three files of every
``mtls:`` listener without touching the cache or open connections; a file that
does not load keeps the previous certificates in force, and says why.
"""

from __future__ import annotations

import signal
import threading
import weakref
from typing import List, Optional

from OpenSSL import SSL
from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator, IStreamServerEndpoint, IStreamServerEndpointStringParser)
from twisted.plugin import IPlugin
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from distcache.address import address_text
from distcache.ratelimit import RateLimitedLog

log = Logger(namespace="distcache.mtls")

# Every live mTLS listener's certificates, reloaded together on SIGHUP.
_live: "weakref.WeakSet[ServerCredentials]" = weakref.WeakSet()
_sighup_installed = False


class CredentialsError(ValueError):
    """Certificate, key or CA files that cannot be used."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CredentialsError(f"cannot read the {what} {path}: {e.strerror}") from None


def _pem_blocks(data: bytes, marker: bytes) -> List[bytes]:
    blocks, begin = [], b"-----BEGIN " + marker + b"-----"
    end = b"-----END " + marker + b"-----"
    rest = data
    while True:
        start = rest.find(begin)
        if start < 0:
            return blocks
        stop = rest.find(end, start)
        if stop < 0:
            return blocks
        stop += len(end)
        blocks.append(rest[start:stop] + b"\n")
        rest = rest[stop:]


def load_context(cert_path: str, key_path: str, ca_path: str) -> SSL.Context:
    """A server context that requires a client certificate issued by a CA in ``ca_path``."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = cert_pem if key_path == cert_path else _read(key_path, "private key")
    ca_pem = _read(ca_path, "CA file")
    certs = _pem_blocks(cert_pem, b"CERTIFICATE")
    cas = _pem_blocks(ca_pem, b"CERTIFICATE")
    if not certs:
        raise CredentialsError(f"{cert_path} holds no PEM certificate")
    if not cas:
        raise CredentialsError(f"{ca_path} holds no PEM CA certificate")
    try:
        server = ssl.PrivateCertificate.loadPEM(certs[0] + key_pem)
        chain = [ssl.Certificate.loadPEM(c).original for c in certs[1:]]
        roots = [ssl.Certificate.loadPEM(c) for c in cas]
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            extraCertChain=chain,
            trustRoot=ssl.trustRootFromCertificates(roots),
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        return options.getContext()
    except (SSL.Error, ValueError) as e:
        raise CredentialsError(
            f"{cert_path} / {key_path} / {ca_path} do not make a TLS server: {e}") from None


@implementer(IOpenSSLServerConnectionCreator)
class ServerCredentials:
    """The certificate, key and CA of one listener, swapped whole on reload."""

    def __init__(self, cert_path: str, key_path: str, ca_path: str):
        self.paths = (cert_path, key_path, ca_path)
        self.context = load_context(*self.paths)
        _live.add(self)

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.context, None)

    def reload(self) -> bool:
        """Load the files again; on any failure keep the certificates in force."""
        try:
            context = load_context(*self.paths)
        except CredentialsError as e:
            log.error("TLS reload failed, the previous certificates stay in force: {why}", why=str(e))
            return False
        self.context = context
        log.info("TLS certificates reloaded from {cert}", cert=self.paths[0])
        return True


def reload_all() -> int:
    """Reload every live listener's certificates; the number that loaded."""
    return sum(1 for creds in list(_live) if creds.reload())


def install_sighup(reactor) -> None:
    """Make SIGHUP reload certificates, once per process, keeping any earlier handler."""
    global _sighup_installed
    if _sighup_installed or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGHUP)

    def on_sighup(signum, frame):
        reactor.callFromThread(reload_all)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, on_sighup)
    _sighup_installed = True


def _why(reason) -> str:
    if reason is not None and reason.check(SSL.Error):
        details = [part[2] for part in reason.value.args[0] if len(part) == 3] \
            if reason.value.args and isinstance(reason.value.args[0], list) else []
        return ", ".join(d for d in details if d) or str(reason.value)
    return "closed before completing the handshake"


class _VerifyingTLS(TLSMemoryBIOProtocol):
    """The TLS layer of one connection, which reports a refused handshake."""

    def connectionLost(self, reason):
        if not getattr(self, "_handshakeDone", True):
            failure = getattr(self, "_reason", None) or reason
            self.factory.refusals.warn(
                "TLS client {peer} refused: {why}", peer=address_text(self.transport.getPeer()), why=_why(failure))
        TLSMemoryBIOProtocol.connectionLost(self, reason)


class _VerifyingTLSFactory(TLSMemoryBIOFactory):
    protocol = _VerifyingTLS
    noisy = False

    def __init__(self, creds, wrapped, refusals):
        TLSMemoryBIOFactory.__init__(self, creds, False, wrapped)
        self.refusals = refusals

    def logPrefix(self):
        return "mTLS"


@implementer(IStreamServerEndpoint)
class MutualTLSServerEndpoint:
    """A TCP listener whose connections must pass a client-certificate handshake first."""

    def __init__(self, reactor, tcp, creds: ServerCredentials):
        self.reactor = reactor
        self.tcp = tcp
        self.creds = creds
        self.refusals = RateLimitedLog(log, "refused TLS clients", reactor)

    def listen(self, factory):
        return self.tcp.listen(_VerifyingTLSFactory(self.creds, factory, self.refusals))


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """The ``mtls:`` endpoint string parser (registered as a Twisted plugin)."""

    prefix = "mtls"

    def parseStreamServer(self, reactor, port, interface: str = "", backlog: str = "4096",
                          certKey: Optional[str] = None, privateKey: Optional[str] = None,
                          caCerts: Optional[str] = None):
        if not privateKey or not caCerts:
            raise ValueError("mtls: needs privateKey=KEY.pem and caCerts=CA.pem "
                             "(and certKey=CERT.pem unless the key file holds the certificate)")
        creds = ServerCredentials(certKey or privateKey, privateKey, caCerts)
        install_sighup(reactor)
        if ":" in interface:
            tcp = endpoints.TCP6ServerEndpoint(reactor, int(port), int(backlog), interface)
        else:
            tcp = endpoints.TCP4ServerEndpoint(reactor, int(port), int(backlog), interface)
        return MutualTLSServerEndpoint(reactor, tcp, creds)
