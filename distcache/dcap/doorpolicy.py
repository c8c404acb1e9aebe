"""
A running door's policy: the resolved settings plus their live parts.

DcapPolicy is plain data (it goes into tap files); DoorPolicy is built when
the door starts and holds what runs: the keep-alive pass over open
deadlines and the passive port allocator.  The door asks it four things:
which buffers an open gets, how to listen for a server-passive mover, how to
set up a data connection, and whether ``check`` may answer ok.
"""

from twisted.logger import Logger

from distcache.dcap.check import has_disk_copy
from distcache.dcap.mover import listen_for_mover
from distcache.dcap.opentimeout import OpenTimeouts
from distcache.dcap.policy import (
    DcapPolicy,
    apply_transfer_buffers,
    client_buffer_request,
    transfer_buffers,
)
from distcache.dcap.portrange import PortAllocator

log = Logger()


class RangePort:
    """
    A mover's listening port taken from the allocator.

    It behaves as the IListeningPort the door keeps (getHost, stopListening)
    and gives its number back to the allocator when it stops listening, which
    the door does whenever the mover ends.
    """

    def __init__(self, allocator, number, listener):
        self._allocator = allocator
        self.number = number
        self._listener = listener
        self._released = False

    def getHost(self):
        return self._listener.getHost()

    def stopListening(self):
        if not self._released:
            self._released = True
            self._allocator.release(self.number)
        return self._listener.stopListening()


class DoorPolicy:
    """The live policy of one door (one per door factory)."""

    def __init__(self, policy=None, clock=None, pool_name=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.policy = policy if policy is not None else DcapPolicy()
        self.clock = clock
        self.pool_name = pool_name
        self.timeouts = OpenTimeouts(clock, self.policy.keep_alive)
        self.ports = PortAllocator(self.policy.port_range)

    def start(self):
        """Start the keep-alive pass (a no-op without a keep-alive)."""
        self.timeouts.start()

    def stop(self):
        self.timeouts.stop()

    # -- buffers -----------------------------------------------------------

    def buffers_for_open(self, options):
        """The effective buffer sizes of an open with these client options."""
        limits = self.policy.buffers_for(self.pool_name)
        return transfer_buffers(limits, **client_buffer_request(options))

    def prepare(self, transport, transfer):
        """
        Set up a data connection before any data flows: socket buffers,
        and tell the open's deadline watch that its transfer has started.
        """
        buffers = getattr(transfer, "buffers", None)
        if buffers is not None:
            apply_transfer_buffers(transport, buffers, session=transfer.sid)
        watch = getattr(transfer, "watch", None)
        if watch is not None:
            watch.transfer_started(writing=transfer.writable)

    # -- passive ports -----------------------------------------------------

    def listen(self, reactor, interface, factory):
        """
        Listen for a server-passive mover inside the configured port range.

        Raises PortRangeExhausted when the range has no free port.
        """
        number, listener = self.ports.listen(
            lambda port: listen_for_mover(reactor, interface, factory, port)
        )
        return RangePort(self.ports, number, listener)

    # -- open deadlines ----------------------------------------------------

    def watch_open(self, sid, client_timeout, expire, interrupt):
        """
        Put an open under its openTimeout (None when none is enforced).

        ``expire()`` answers a still-waiting open with failed 112;
        ``interrupt()`` cuts a flowing read so that the client resumes it.
        """
        seconds = self.policy.open_deadline_seconds(client_timeout)
        return self.timeouts.watch(sid, seconds, expire, interrupt)

    # -- check -----------------------------------------------------------

    def has_disk_copy(self, entry, pools):
        return has_disk_copy(entry, pools, self.policy.strict_check)
