"""UNIX stream sockets read with ``recv``.

Twisted's UNIX transports read every chunk with ``recvmsg`` so that a protocol can be
handed file descriptors; the suite's protocols never are, and on a path where each
request is one read (dc_client's local clients and its link to dc_server, a cache's
callers) ``recvmsg`` and its ancillary-data handling cost about a tenth of the request.
These transports read with the plain ``recv`` of TCP connections and are otherwise
Twisted's own: listening (backlog, mode, lock file), connecting, writing, closing.

:func:`reactor_for` hands Twisted's endpoint parsers a view of the reactor whose
``listenUNIX`` and ``connectUNIX`` make them; a reactor that is not a POSIX one (a test's
memory reactor) is handed over unchanged.
"""

from __future__ import annotations

from twisted.internet import posixbase, tcp, unix

__all__ = ["Server", "Port", "Client", "Connector", "reactor_for"]


class _RecvReads:
    """Read with ``recv``: no file descriptors ever arrive on these connections."""

    doRead = tcp.Connection.doRead


class Server(_RecvReads, unix.Server):
    """An accepted UNIX connection."""


class Port(unix.Port):
    """A listening UNIX socket whose connections are :class:`Server`."""

    transport = Server


class Client(_RecvReads, unix.Client):
    """An outgoing UNIX connection."""


class Connector(unix.Connector):
    """Connects (and reconnects) :class:`Client` transports."""

    def _makeTransport(self) -> Client:
        return Client(self.address, self, self.reactor, self.checkPID)


class _StreamUNIXReactor:
    """``reactor`` with ``listenUNIX`` and ``connectUNIX`` making the transports above."""

    def __init__(self, reactor):
        self._reactor = reactor

    def __getattr__(self, name):
        return getattr(self._reactor, name)

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0) -> Port:
        port = Port(address, factory, backlog, mode, self._reactor, wantPID)
        port.startListening()
        return port

    def connectUNIX(self, address, factory, timeout=30, checkPID=0) -> Connector:
        connector = Connector(address, factory, timeout, self._reactor, checkPID)
        connector.connect()
        return connector


def reactor_for(reactor):
    """What to give an endpoint parser so that its UNIX endpoints use these transports."""
    if isinstance(reactor, posixbase.PosixReactorBase):
        return _StreamUNIXReactor(reactor)
    return reactor
