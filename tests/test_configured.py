"""ConfiguredService: plain settings pickle into a tap file; the parts are built at start."""

from __future__ import annotations

import os
import pickle

import pytest_twisted
from twisted.application.service import Service
from twisted.internet.protocol import Factory, Protocol

from distcache.configured import ConfiguredService
from distcache.listening import Listener


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoService(ConfiguredService):
    """A tool-shaped service: an address in its settings, a listener built at start."""

    runtime = ("factory",)

    def __init__(self, listen, reactor=None):
        super().__init__(reactor)
        self.listen = listen
        self.factory = None
        self.builds = 0

    def build(self, reactor):
        self.builds += 1
        self.factory = Factory.forProtocol(Echo)
        Listener(self.listen, self.factory, reactor=reactor).setServiceParent(self)


def test_settings_pickle_and_runtime_parts_do_not(sockdir):
    service = EchoService(f"UNIX:{sockdir}/echo", reactor="not picklable")
    service.factory = lambda: None  # handed in at run time: never pickled
    service.addService(Service())
    copy = pickle.loads(pickle.dumps(service))
    assert copy.listen == service.listen
    assert copy.factory is None and list(copy) == [] and not copy.built
    assert copy._reactor is None


@pytest_twisted.inlineCallbacks
def test_a_pickled_service_builds_and_listens_when_started(sockdir):
    path = f"{sockdir}/echo"
    copy = pickle.loads(pickle.dumps(EchoService(f"UNIX:{path}")))
    copy.privilegedStartService()   # twistd binds here, before dropping privileges
    copy.startService()
    try:
        assert copy.builds == 1 and copy.built
        [listener] = list(copy)
        assert listener.factory is copy.factory and os.path.exists(path)
        assert listener.port is not None
    finally:
        yield copy.stopService()
    assert not os.path.exists(path)


def test_start_without_the_privileged_step_builds_once(sockdir):
    service = EchoService(f"UNIX:{sockdir}/echo")
    service._ensure_built()
    service._ensure_built()
    assert service.builds == 1 and len(list(service)) == 1


def test_the_reactor_is_the_global_one_unless_given():
    from twisted.internet import reactor
    assert EchoService("UNIX:/x").reactor is reactor
    clock = object()
    assert EchoService("UNIX:/x", reactor=clock).reactor is clock
