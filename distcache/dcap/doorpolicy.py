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


#: dccp 2.47 keeps the door's port in a signed 16-bit number
HIGHEST_DCCP_PORT = 32767


def _size(n):
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % factor == 0 and n >= factor:
            return f"{n // factor}{unit}"
    return str(n)


def policy_summary(policy, access, allow_truncate=False):
    """One line of the door's effective policy, after batch, poollist and option precedence."""
    policy = policy if policy is not None else DcapPolicy()
    b = policy.buffers
    if policy.open_timeout is None:
        timeout = "openTimeout none"
    else:
        timeout = f"openTimeout {policy.open_timeout}s ({policy.open_timeout_origin or 'default'})"
        if not policy.enforces_open_timeout:
            timeout += " not enforced without keepAlive"
    parts = [
        f"buffers send {_size(b.default_send)}/{_size(b.max_send)} "
        f"recv {_size(b.default_recv)}/{_size(b.max_recv)} io {_size(b.default_io)}/"
        f"{_size(b.max_io)} (default/max)",
        timeout,
        f"keepAlive {policy.keep_alive}s" if policy.keep_alive else "keepAlive off",
        "check strict" if policy.strict_check else "check fuzzy",
        f"passive ports {policy.port_range}" if policy.port_range else "passive ports any",
        f"anonymous access {getattr(access, 'value', access)}"
        + (", overwrite allowed" if allow_truncate else ""),
    ]
    if policy.pool_buffers:
        parts.append("pools " + ", ".join(name for name, _ in policy.pool_buffers))
    return "; ".join(parts)


def port_warning(port):
    """The warning for a control port dccp 2.47 cannot reach, or None."""
    if port is not None and port > HIGHEST_DCCP_PORT:
        return (f"the door listens on port {port}: dccp 2.47 cannot reach ports above "
                f"{HIGHEST_DCCP_PORT} (it keeps the port in a signed 16-bit number)")
    return None
