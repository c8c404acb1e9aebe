"""The passive port range and its allocator."""

import pytest
import pytest_twisted
from hypothesis import given, strategies as st
from twisted.internet.error import CannotListenError

from distcache.dcap.configsource import ConfigError
from distcache.dcap.portrange import PortAllocator, PortRange, PortRangeExhausted


@pytest.mark.parametrize(
    "text",
    [
        "33115:33145",
        "33115,33145",
        "org.dcache.net.tcp.portrange=33115:33145",
        "-Dorg.dcache.net.tcp.portrange=33115:33145",
        " 33115:33145 ",
    ],
)
def test_parse_forms(text):
    assert PortRange.parse(text) == PortRange(33115, 33145)


def test_single_port():
    assert len(PortRange.parse("4000")) == 1


@pytest.mark.parametrize(
    "text", ["", "a:b", "0:10", "10:5", "1:70000", "other.property=1:2", "1:2:3"]
)
def test_bad_ranges_are_refused_with_origin(text):
    with pytest.raises(ConfigError) as e:
        PortRange.parse(text, "--portrange")
    assert str(e.value).startswith("--portrange: ")


class FakeListener:
    def __init__(self, port):
        self.port = port

    def getHost(self):
        return self


class Binder:
    """bind(port) that refuses ports taken by someone else."""

    def __init__(self, taken=()):
        self.taken = set(taken)
        self.tried = []

    def __call__(self, port):
        self.tried.append(port)
        if port in self.taken:
            raise CannotListenError("", port, OSError("in use"))
        return FakeListener(port if port else 54321)


def test_allocates_inside_range_and_skips_taken_ports():
    alloc = PortAllocator(PortRange(5000, 5003))
    bind = Binder(taken={5000, 5002})
    port1, _ = alloc.listen(bind)
    port2, _ = alloc.listen(bind)
    assert (port1, port2) == (5001, 5003)
    assert alloc.in_use == {5001, 5003}


def test_exhausted_range_fails_clearly_and_release_frees():
    alloc = PortAllocator(PortRange(5000, 5001))
    bind = Binder()
    a, _ = alloc.listen(bind)
    b, _ = alloc.listen(bind)
    with pytest.raises(PortRangeExhausted) as e:
        alloc.listen(bind)
    assert "5000:5001" in str(e.value)
    alloc.release(a)
    assert alloc.listen(bind)[0] == a


def test_no_range_lets_the_system_choose():
    alloc = PortAllocator(None)
    bind = Binder()
    assert alloc.listen(bind)[0] == 54321
    assert bind.tried == [0]


@given(
    size=st.integers(1, 20),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=80),
)
def test_never_outside_range_never_twice(size, ops):
    r = PortRange(10000, 10000 + size - 1)
    alloc = PortAllocator(r)
    bind = Binder()
    held = []
    for take, pick in ops:
        if take:
            try:
                port, _ = alloc.listen(bind)
            except PortRangeExhausted:
                assert len(held) == size
                continue
            assert r.low <= port <= r.high
            assert port not in held
            held.append(port)
        elif held:
            alloc.release(held.pop(pick % len(held)))
    assert alloc.in_use == set(held)


@pytest_twisted.inlineCallbacks
def test_real_sockets_exhaust_and_release():
    """The allocator with real listening sockets of the reactor."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    factory = Factory()

    def bind(port):
        return reactor.listenTCP(port, factory, interface="127.0.0.1")

    listeners = []
    try:
        # Another process may take a probed port before it is bound again: probe anew
        # until the allocator gets at least one port of its range.
        for _ in range(20):
            probe = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
            base = probe.getHost().port
            yield probe.stopListening()
            r = PortRange(base, base + 2)
            alloc = PortAllocator(r)
            while True:
                try:
                    listeners.append(alloc.listen(bind))
                except PortRangeExhausted:
                    break
            if listeners:
                break
        assert listeners, "no probed port stayed free in 20 tries"
        assert all(r.low <= port <= r.high for port, _ in listeners)
        assert all(listener.getHost().port == port for port, listener in listeners)
    finally:
        for port, listener in listeners:
            yield listener.stopListening()
            alloc.release(port)
    assert alloc.in_use == frozenset()
    port, listener = alloc.listen(bind)
    yield listener.stopListening()


@given(st.text(max_size=40))
def test_random_range_text_parses_or_is_refused_clearly(text):
    try:
        r = PortRange.parse(text, "--portrange")
    except ConfigError as e:
        assert str(e).startswith("--portrange: ")
    else:
        assert 1 <= r.low <= r.high <= 65535
