"""dc_client's command line, both the twistd plugin options and the C flags."""

from __future__ import annotations

import pickle

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from distcache import cflags, client_tap
from distcache.listening import Listener


def parse(*argv):
    options = client_tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults():
    options = parse("--server", "IP:cache.example:9001")
    assert options["listen"] == "UNIX:/tmp/scache"
    assert options["retry"] == 5000
    assert options["idle"] == 0
    assert options["ownership"].perms is None


def test_connect_is_an_alias_of_server():
    assert parse("--connect", "UNIX:/run/dc")["server"] == "UNIX:/run/dc"


def test_several_servers_repeated_or_comma_separated_in_order_of_preference():
    for argv in (["--server", "UNIX:/run/a", "--server", "IP:10.0.0.2:9001",
                  "--connect", "IP:10.0.0.3:9001"],
                 ["--server", "UNIX:/run/a,IP:10.0.0.2:9001", "--server", "IP:10.0.0.3:9001"],
                 ["--server", "UNIX:/run/a, IP:10.0.0.2:9001,IP:10.0.0.3:9001"]):
        options = parse(*argv)
        assert options["servers"] == ["UNIX:/run/a", "IP:10.0.0.2:9001", "IP:10.0.0.3:9001"]
        assert options["server"] == "UNIX:/run/a"
        service = client_tap.makeService(options)
        assert service.servers == options["servers"]


def test_c_form_takes_several_servers_either_way():
    for argv in (["-server", "UNIX:/run/a", "-server", "IP:10.0.0.2:9001"],
                 ["-server", "UNIX:/run/a,IP:10.0.0.2:9001"],
                 ["-connect", "UNIX:/run/a", "-server", "IP:10.0.0.2:9001"]):
        tail = plugin_tail(cflags.twistd_argv("dc_client", argv))
        assert parse(*tail)["servers"] == ["UNIX:/run/a", "IP:10.0.0.2:9001"]


def test_a_service_tries_the_next_server_at_once_and_the_first_again_after_the_period(
        tmp_path):
    from twisted.internet.error import ConnectionRefusedError
    reactor = MemoryReactorClock()
    service = client_tap.ClientProxyService(
        f"UNIX:{tmp_path}/l", ["IP:127.0.0.1:9", "IP:127.0.0.1:10"], retry_ms=250,
        reactor=reactor)
    service.privilegedStartService()
    service.startService()
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9)]
    reactor.tcpClients[0][2].clientConnectionFailed(None, ConnectionRefusedError())
    assert [c[:2] for c in reactor.tcpClients] == [("127.0.0.1", 9), ("127.0.0.1", 10)]
    reactor.tcpClients[1][2].clientConnectionFailed(None, ConnectionRefusedError())
    reactor.advance(0.249)
    assert len(reactor.tcpClients) == 2
    reactor.advance(0.001)
    assert reactor.tcpClients[2][:2] == ("127.0.0.1", 9)
    service.stopService()


def test_a_tap_written_with_one_server_still_loads(tmp_path):
    service = client_tap.makeService(parse("--server", "UNIX:/nowhere"))
    state = service.__getstate__()
    del state["servers"]
    copy = client_tap.ClientProxyService.__new__(client_tap.ClientProxyService)
    copy.__setstate__(state)
    assert copy.servers == ["UNIX:/nowhere"]


def test_all_options():
    options = parse("--listen", "IP:127.0.0.1:9100", "--server", "tcp:host=cache:port=9001",
                    "--retry", "250", "--idle", "30000", "--sockperms", "0660")
    assert (options["listen"], options["retry"], options["idle"]) == ("IP:127.0.0.1:9100",
                                                                     250, 30000)
    assert options["ownership"].perms == 0o660


@pytest.mark.parametrize("argv", [
    [],
    ["--server", "nonsense"],
    ["--server", "UNIX:/x", "--listen", "IP:host:notaport"],
    ["--server", "UNIX:/x", "--retry", "0"],
    ["--server", "UNIX:/x", "--retry", "soon"],
    ["--server", "UNIX:/x", "--idle", "-1"],
    ["--server", "UNIX:/x", "--sockperms", "rw"],
    ["--server", "UNIX:/x,"],
    ["--server", "UNIX:/x,nonsense"],
])
def test_bad_command_lines(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def plugin_tail(argv):
    """What follows the plugin name (``--prefix dc_client`` may come earlier)."""
    return argv[len(argv) - argv[::-1].index("dc_client"):]


def test_c_flags_become_twistd_options():
    argv = cflags.twistd_argv("dc_client", ["-server", "IP:cache:9001", "-listen", "UNIX:/tmp/x",
                                            "-retry", "1000", "-idle", "60000", "-daemon",
                                            "-pidfile", "/run/dc_client.pid",
                                            "-sockperms", "0600"])
    assert plugin_tail(argv) == [
        "--server", "IP:cache:9001", "--listen", "UNIX:/tmp/x", "--retry", "1000",
        "--idle", "60000", "--sockperms", "0600"]
    assert "--pidfile=/run/dc_client.pid" in argv and "--nodaemon" not in argv
    # The translated tail parses as dc_client options, -connect included.
    tail = plugin_tail(cflags.twistd_argv("dc_client", ["-connect", "UNIX:/s"]))
    assert parse(*tail)["server"] == "UNIX:/s"


def test_the_service_pickles_as_plain_configuration(tmp_path):
    service = client_tap.makeService(parse("--server", "UNIX:/nowhere",
                                           "--listen", f"UNIX:{tmp_path}/l", "--retry", "100"))
    copy = pickle.loads(pickle.dumps(service))
    assert (copy.listen, copy.server, copy.retry_ms, copy.link) == (
        f"UNIX:{tmp_path}/l", "UNIX:/nowhere", 100, None)


def test_the_service_listens_and_connects_with_the_given_retry(tmp_path):
    reactor = MemoryReactorClock()
    service = client_tap.ClientProxyService(f"UNIX:{tmp_path}/l", "IP:127.0.0.1:9",
                                            retry_ms=250, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    assert [type(s) for s in service][0] is Listener
    assert reactor.unixServers[0][0] == f"{tmp_path}/l"
    host, port, factory, _timeout, _bind = reactor.tcpClients[0]
    assert (host, port) == ("127.0.0.1", 9)
    # A failed attempt is retried after exactly --retry milliseconds, every time.
    from twisted.internet.error import ConnectionRefusedError
    for attempt in range(1, 4):
        factory.clientConnectionFailed(None, ConnectionRefusedError())
        (call,) = [c for c in reactor.getDelayedCalls() if c.active()]
        assert call.getTime() - reactor.seconds() == pytest.approx(0.25)
        reactor.advance(0.25)
        assert len(reactor.tcpClients) == attempt + 1
        factory = reactor.tcpClients[-1][2]
    service.stopService()


def test_the_plugin_is_found():
    from twisted.plugin import getPlugins
    from twisted.application.service import IServiceMaker
    names = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert names["dc_client"].options is client_tap.Options
