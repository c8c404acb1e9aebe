"""
A running door's policy: the resolved settings plus their live parts.

DcapPolicy is plain data (it goes into tap files); DoorPolicy is built when
the door starts and holds what runs: the keep-alive pass over open
deadlines and the pool's data port (one per interface the door's clients
reach it on).  The door asks it four things: which buffers an open gets,
where a server-passive mover waits for its client, how to set up a data
connection, and whether ``check`` may answer ok.
"""

from twisted.logger import Logger

from distcache.dcap.check import has_disk_copy
from distcache.dcap.dataport import DataPort
from distcache.dcap.mover import HELLO_TIMEOUT, listen_for_mover
from distcache.dcap.opentimeout import OpenTimeouts
from distcache.dcap.policy import (
    DcapPolicy,
    apply_transfer_buffers,
    client_buffer_request,
    transfer_buffers,
)
from distcache.dcap.portrange import PortAllocator, PortRange

log = Logger()


class DoorPolicy:
    """The live policy of one door (one per door factory)."""

    def __init__(self, policy=None, clock=None, pool_name=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.policy = policy if policy is not None else DcapPolicy()
        self.clock = clock
        self.pool_name = pool_name
        self.timeouts = OpenTimeouts(clock, self.policy.keep_alive)
        data_port = getattr(self.policy, "data_port", None)
        self.ports = PortAllocator(PortRange(data_port, data_port) if data_port
                                   else self.policy.port_range)
        self.hello_timeout = HELLO_TIMEOUT
        #: interface -> the DataPort listening there
        self.data_ports = {}

    def start(self):
        """Start the keep-alive pass (a no-op without a keep-alive)."""
        self.timeouts.start()

    def stop(self):
        """Stop the keep-alive pass and close the data ports."""
        self.timeouts.stop()
        ports, self.data_ports = self.data_ports, {}
        for port in ports.values():
            self.ports.release(port.number)
            port.listener.stopListening()

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

    # -- the data port ----------------------------------------------------

    def data_port(self, reactor, interface):
        """
        The data port on interface, listening from the first call on: the
        first free port of the range (or the --data-port), else one the
        system chooses.

        Raises PortRangeExhausted when no port of the range can be bound.
        """
        port = self.data_ports.get(interface)
        if port is None:
            port = DataPort(clock=self.clock, hello_timeout=self.hello_timeout)
            port.number, port.listener = self.ports.listen(
                lambda number: listen_for_mover(reactor, interface, port, number)
            )
            self.data_ports[interface] = port
            log.info("data port listening on {where}:{number} for every server-passive mover",
                     where=interface or "*", number=port.number)
        return port

    def expect_mover(self, reactor, interface, transfer, challenge, on_accept):
        """
        Register transfer on the data port of interface under challenge.

        The returned ExpectedMover names the port (``getHost()``) and is
        withdrawn with ``stopListening()``.
        """
        return self.data_port(reactor, interface).expect(transfer, challenge, on_accept)

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


def _data_port_summary(policy):
    data_port = getattr(policy, "data_port", None)
    if data_port:
        return f"data port {data_port}"
    if policy.port_range:
        return f"data port first free of {policy.port_range}"
    return "data port any"


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
        _data_port_summary(policy),
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
