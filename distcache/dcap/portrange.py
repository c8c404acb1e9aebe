"""
The port range server-passive movers listen on.

Firewalls in front of pools open exactly one range of ports
(``org.dcache.net.tcp.portrange=33115:33145``), so a mover waiting for its
client must listen inside that range and nowhere else.  The allocator hands
out ports of the range, skips ports that something else already holds,
fails clearly when none is left, and takes a port back when its mover ends.
It knows nothing of sockets: the caller passes the function that tries to
listen on one port.
"""

from dataclasses import dataclass

from twisted.internet.error import CannotListenError

from distcache.dcap.configsource import ConfigError

PROPERTY = "org.dcache.net.tcp.portrange"


class PortRangeExhausted(Exception):
    """Every port of the range is in use: this transfer cannot get one."""

    def __init__(self, port_range):
        self.port_range = port_range
        super().__init__(
            f"no free data port in the passive port range {port_range}"
        )


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of TCP ports, low <= high."""

    low: int
    high: int

    def __str__(self):
        return f"{self.low}:{self.high}"

    def __len__(self):
        return self.high - self.low + 1

    def __iter__(self):
        return iter(range(self.low, self.high + 1))

    @classmethod
    def parse(cls, text, origin="--portrange"):
        """
        Read ``LOW:HIGH`` (also ``LOW,HIGH`` and a single port), or dCache's
        property form ``org.dcache.net.tcp.portrange=LOW:HIGH`` (with or
        without a leading ``-D``).
        """
        spec = text.strip()
        if spec.startswith("-D"):
            spec = spec[2:]
        if "=" in spec:
            name, _, spec = spec.partition("=")
            if name.strip() != PROPERTY:
                raise ConfigError(
                    origin, f"expected {PROPERTY}=LOW:HIGH, not {text!r}"
                )
            spec = spec.strip()
        for sep in (":", ","):
            if sep in spec:
                low_text, _, high_text = spec.partition(sep)
                break
        else:
            low_text = high_text = spec
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise ConfigError(
                origin, f"port range must be LOW:HIGH, not {text!r}"
            ) from None
        if not (1 <= low <= high <= 65535):
            raise ConfigError(
                origin,
                f"port range must satisfy 1 <= LOW <= HIGH <= 65535, not {text!r}",
            )
        return cls(low, high)


class PortAllocator:
    """
    Hands out the ports of a range to listening movers.

    ``listen(bind)`` calls ``bind(port)`` for free ports of the range in
    turn, starting after the last port handed out (so a just-released port
    is not reused at once by the next transfer), until one does not raise
    CannotListenError; it returns ``(port, listener)``.  Without a range,
    ``bind(0)`` lets the system choose.  ``release(port)`` gives a port back.
    """

    def __init__(self, port_range=None):
        self.port_range = port_range
        self._in_use = set()
        self._next = port_range.low if port_range else 0

    @property
    def in_use(self):
        return frozenset(self._in_use)

    def _candidates(self):
        r = self.port_range
        span = len(r)
        start = self._next - r.low
        for i in range(span):
            port = r.low + (start + i) % span
            if port not in self._in_use:
                yield port

    def listen(self, bind):
        if self.port_range is None:
            listener = bind(0)
            return listener.getHost().port, listener
        for port in self._candidates():
            try:
                listener = bind(port)
            except CannotListenError:
                continue
            self._in_use.add(port)
            self._next = port + 1 if port < self.port_range.high else self.port_range.low
            return port, listener
        raise PortRangeExhausted(self.port_range)

    def release(self, port):
        self._in_use.discard(port)
