"""
DCAP door and pool policies resolved into one immutable settings object.

Settings come from dCache's own configuration forms (a batch file's
``set context`` entries and create lines, a poollist) and from plain twistd
options.  Precedence follows dCache where dCache defines one:

* buffer sizes (per pool): built-in default < the pool's create-line option
  or poollist entry < context ``dCap3-NAME`` (dCache's mover looks at the
  context first) < an explicit twistd option;
* openTimeout: context ``dCap-openTimeout`` < context ``openTimeout`` <
  the door's ``-openTimeout`` < the twistd ``--open-timeout`` (the same
  level, spelt as an option) < the client's ``-timeout`` on each open;
* keepAlive: the door's create-line option < the twistd option;
* check: context ``dCapDoor-check`` < the door's ``-check`` < the twistd
  option.

The TCP buffer functions here are what the mover uses for each transfer:
``transfer_buffers`` clamps what the client asked for and ``apply_buffers``
sets it on the data socket before any data flows.
"""

import socket
from dataclasses import dataclass, replace

from twisted.logger import Logger

from distcache.dcap.configsource import ConfigError, Setting, parse_int
from distcache.dcap.portrange import PortRange
from distcache.dcap.space import SpaceSettings, resolve_space

log = Logger()

KiB = 1024
MiB = 1024 * KiB

# Names as dCache spells them: pool create-line option names; the context
# spells each with the prefix "dCap3-".
BUFFER_OPTIONS = {
    "defaultSendBufferSize": "default_send",
    "defaultRecvBufferSize": "default_recv",
    "maxSendBufferSize": "max_send",
    "maxRecvBufferSize": "max_recv",
    "defaultIoBufferSize": "default_io",
    "maxIoBufferSize": "max_io",
}
CONTEXT_PREFIX = "dCap3-"
CHECK_MODES = ("strict", "fuzzy")
# The smallest buffer worth configuring; below it the kernel rounds up anyway.
MIN_BUFFER = 1024


@dataclass(frozen=True)
class BufferLimits:
    """A pool's default and maximum socket and I/O buffer sizes, in bytes."""

    default_send: int = 256 * KiB
    default_recv: int = 256 * KiB
    max_send: int = MiB
    max_recv: int = MiB
    default_io: int = MiB
    max_io: int = 4 * MiB


@dataclass(frozen=True)
class TransferBuffers:
    """The sizes one transfer uses: SO_SNDBUF, SO_RCVBUF and the I/O block."""

    send: int
    recv: int
    io: int

    def __str__(self):
        return f"send={self.send} recv={self.recv} io={self.io}"


def _clamp(requested, default, maximum):
    """min(request or default, max): the server never exceeds its maximum."""
    wanted = requested if requested is not None and requested > 0 else default
    return min(wanted, maximum)


def transfer_buffers(limits, send=None, receive=None, bsize=None):
    """
    The effective buffer sizes of one transfer.

    ``send``/``receive``/``bsize`` are the client's ``-send``, ``-receive``
    and ``-bsize`` open options (None or <= 0 when absent): dccp's ``-r``
    becomes the pool's send buffer and ``-s`` its receive buffer.
    """
    return TransferBuffers(
        send=_clamp(send, limits.default_send, limits.max_send),
        recv=_clamp(receive, limits.default_recv, limits.max_recv),
        io=_clamp(bsize, limits.default_io, limits.max_io),
    )


def client_buffer_request(options):
    """
    The client's buffer requests from an open's options (a dict of str).

    Unparsable values are treated as absent, as dCache's mover does: a
    client asking for nonsense still gets the pool's defaults.
    """

    def number(name):
        value = options.get(name)
        if value is None:
            return None
        try:
            return int(str(value), 10)
        except ValueError:
            return None

    return {
        "send": number("send"),
        "receive": number("receive"),
        "bsize": number("bsize"),
    }


def apply_buffers(sock, buffers):
    """
    Set SO_SNDBUF and SO_RCVBUF on a data socket; return what it reports.

    Called before the first byte of data moves (right after accept or
    connect).  Linux doubles the value it is given and reports the doubled
    value, so the returned pair is the kernel's view, logged as such.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers.send)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers.recv)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def apply_transfer_buffers(transport, buffers, session=None):
    """
    apply_buffers on a Twisted TCP transport, logging the transfer's sizes.

    Works for both connection modes: the accepted connection of a
    server-passive mover and the outgoing connection of a client-passive
    one are both TCP transports with a handle.
    """
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if not isinstance(sock, socket.socket):
        log.warn(
            "session {session}: no socket to set buffers on ({buffers})",
            session=session,
            buffers=str(buffers),
        )
        return None
    reported = apply_buffers(sock, buffers)
    log.info(
        "session {session}: buffer sizes {buffers} (kernel reports "
        "SO_SNDBUF={sndbuf} SO_RCVBUF={rcvbuf})",
        session=session,
        buffers=str(buffers),
        sndbuf=reported[0],
        rcvbuf=reported[1],
    )
    return reported


def client_open_timeout(value):
    """
    The client's ``-timeout`` option as seconds, or None when not set.

    dccp sends ``-timeout=-1`` unless ``-o`` is given; zero, negative and
    unparsable values all mean "not set".
    """
    if value is None:
        return None
    try:
        seconds = int(str(value), 10)
    except ValueError:
        return None
    return seconds if seconds > 0 else None


@dataclass(frozen=True)
class DcapPolicy:
    """
    Everything issue-wide the door and its movers decide by configuration.

    ``open_timeout`` and ``keep_alive`` are seconds or None (0 in a
    configuration means none).  Without a keep-alive no open deadline is
    enforced, as in dCache.
    """

    buffers: BufferLimits = BufferLimits()
    # (pool name, BufferLimits) pairs from the poollist: a tuple, so the
    # policy stays immutable and can be pickled into a tap file.
    pool_buffers: tuple = ()
    open_timeout: "int | None" = None
    # where open_timeout came from ("door.batch:3", "--open-timeout"), for the start-up log
    open_timeout_origin: "str | None" = None
    keep_alive: "int | None" = None
    strict_check: bool = False
    port_range: "PortRange | None" = None
    # the pool's size, water marks and flush policy (space.py), and per poollist pool
    space: SpaceSettings = SpaceSettings()
    pool_space: tuple = ()
    # the one data port (--data-port); None: the first free port of port_range
    data_port: "int | None" = None

    def buffers_for(self, pool=None):
        """The buffer limits of the named pool (the door's own by default)."""
        for name, limits in self.pool_buffers:
            if name == pool:
                return limits
        return self.buffers

    def space_for(self, pool=None):
        """The space settings of the named pool (the door's own by default)."""
        for name, settings in self.pool_space:
            if name == pool:
                return settings
        return self.space

    def open_deadline_seconds(self, client_timeout=None):
        """
        How long an open may wait: the client's ``-timeout`` when it set
        one, else the door's resolved openTimeout; None for no limit.
        """
        mine = client_open_timeout(client_timeout)
        if mine is not None:
            return mine
        return self.open_timeout

    @property
    def enforces_open_timeout(self):
        return bool(self.keep_alive)


def _resolve_buffers(base, context, pool_options, explicit):
    """Apply the buffer precedence to one pool's limits."""
    values = {}
    for option, attr in BUFFER_OPTIONS.items():
        setting = explicit.get(option)
        if setting is None:
            setting = context.get(CONTEXT_PREFIX + option)
        if setting is None:
            setting = pool_options.get(option)
        if setting is not None:
            values[attr] = parse_int(setting, option, minimum=MIN_BUFFER)
    return replace(base, **values)


def _seconds(setting, name):
    value = parse_int(setting, name, minimum=0)
    return value or None


def _first(*settings):
    for s in settings:
        if s is not None:
            return s
    return None


def resolve_policy(
    batch=None,
    poollist=(),
    door_options=None,
    pool_options=None,
    explicit=None,
):
    """
    Resolve every source into one DcapPolicy.

    ``batch`` is a BatchFile (or None), ``poollist`` a sequence of
    PoolEntry, ``door_options``/``pool_options`` create-line options given
    outside a batch file (dicts of Setting), ``explicit`` the twistd options
    given on the command line (dict of Setting keyed by the create-line name,
    plus ``portrange``).  Raises ConfigError naming the origin of the first
    value it cannot accept.
    """
    context = dict(batch.context) if batch else {}
    door = dict(batch.door_options) if batch else {}
    door.update(door_options or {})
    pool = dict(batch.pool_options) if batch else {}
    pool.update(pool_options or {})
    explicit = dict(explicit or {})

    buffers = _resolve_buffers(BufferLimits(), context, pool, explicit)
    per_pool = {}
    for entry in poollist:
        merged = dict(pool)
        merged.update(entry.options)
        per_pool[entry.name] = _resolve_buffers(
            BufferLimits(), context, merged, explicit
        )

    timeout_setting = _first(
        explicit.get("openTimeout"),
        door.get("openTimeout"),
        context.get("openTimeout"),
        context.get("dCap-openTimeout"),
    )
    open_timeout = (
        _seconds(timeout_setting, "openTimeout") if timeout_setting else None
    )

    keep_setting = _first(explicit.get("keepAlive"), door.get("keepAlive"))
    keep_alive = _seconds(keep_setting, "keepAlive") if keep_setting else None

    check_setting = _first(
        explicit.get("check"), door.get("check"), context.get("dCapDoor-check")
    )
    strict = False
    if check_setting is not None:
        mode = check_setting.value.strip().lower()
        if mode not in CHECK_MODES:
            raise ConfigError(
                check_setting.origin,
                f"check must be strict or fuzzy, not {check_setting.value!r}",
            )
        strict = mode == "strict"

    range_setting = explicit.get("portrange")
    port_range = None
    if range_setting is not None and range_setting.value.strip():
        port_range = PortRange.parse(range_setting.value, range_setting.origin)
    data_port = _data_port(explicit.get("dataport"), port_range)

    space = resolve_space(explicit, pool)
    per_pool_space = tuple((entry.name, resolve_space(explicit, entry.options, pool))
                           for entry in poollist)

    return DcapPolicy(
        buffers=buffers,
        pool_buffers=tuple(per_pool.items()),
        open_timeout=open_timeout,
        open_timeout_origin=timeout_setting.origin if timeout_setting else None,
        keep_alive=keep_alive,
        strict_check=strict,
        port_range=port_range,
        space=space,
        pool_space=per_pool_space,
        data_port=data_port,
    )


def _data_port(setting, port_range):
    """The --data-port number, which must lie inside the port range if both are given."""
    if setting is None or not setting.value.strip():
        return None
    try:
        port = int(setting.value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(setting.origin, f"dataport must be a port number 1..65535, "
                                          f"not {setting.value!r}")
    if port_range is not None and not port_range.low <= port <= port_range.high:
        raise ConfigError(setting.origin, f"dataport {port} lies outside the port range "
                                          f"{port_range}")
    return port


def explicit_setting(value, option_name):
    """Wrap a twistd option value as a Setting whose origin is the option."""
    if value is None:
        return None
    return Setting(str(value), option_name)
