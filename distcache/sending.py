"""Writing to a socket transport at once when nothing is queued ahead.

A Twisted socket transport queues every write and sends it on the reactor's next turn,
after asking epoll to report the socket writable and before asking it to stop: two
system calls and one more turn of the loop for each reply.  A cache's replies are small
and its sockets are nearly always writable, so :func:`send` hands the bytes to the
socket straight away when the transport has nothing queued, and leaves the rest (a
partial send, a full socket, an error, a closing connection, a transport of another
kind) to the transport's own ``write``, which keeps the order, the back-pressure on
the transport's producer and the reporting of a lost connection as they are.
"""

from __future__ import annotations

from twisted.internet import tcp

# Unix and TCP connections (client and server side) are all tcp.Connection; TLS and
# other wrapped transports, and the test transports, are not, and use ``write``.
_SOCKET_TRANSPORT = tcp.Connection


def send(transport, data: bytes) -> None:
    """Write ``data`` to ``transport``: at once if nothing is queued ahead of it."""
    if (isinstance(transport, _SOCKET_TRANSPORT) and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.TLS and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full, or failing: the transport's own write finds out which
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
