"""The twistd plugin: option parsing, the service's plain configuration, pickling."""

import pickle

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from distcache import dcap_tap
from distcache.dcap.namespace import Access


def parse(*argv):
    options = dcap_tap.Options()
    options.parseOptions(list(argv))
    return options


def test_plugin_is_found_by_twistd():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert "dcap-door" in makers
    assert makers["dcap-door"].options is dcap_tap.Options


def test_defaults():
    options = parse()
    assert options["listen"] == "tcp:22125"
    assert options["root"] == "var/dcap"
    config = dcap_tap.door_config(options)
    assert config.access is Access.READONLY
    assert not config.allow_truncate and not config.connect_back
    assert config.connect_host is None
    assert config.trust_client_uid == () and config.allowed_subnets == ()
    assert config.max_waiting_opens == 64
    assert dcap_tap.door_config(parse("--max-waiting-opens", "5")).max_waiting_opens == 5
    assert config.max_file_size is None
    assert (config.max_logins, config.max_logins_per_peer) == (1500, 500)
    limits = dcap_tap.login_limits(dcap_tap.door_config(
        parse("--max-logins", "10", "--max-logins-per-peer", "0")))
    assert (limits.total, limits.per_peer, limits.option) == (10, 0, "max-logins")
    assert dcap_tap.door_config(parse("--max-file-size", "2G")).max_file_size == 2 << 30
    assert dcap_tap.door_config(parse("--max-file-size", "4096")).max_file_size == 4096


def test_network_options():
    config = dcap_tap.door_config(parse("--trust-client-uid", "127.0.0.1/8, ::1",
                                        "--allowed-subnets", "10.0.0.0/8,127.0.0.1"))
    assert config.trust_client_uid == ("127.0.0.0/8", "::1/128")
    assert config.allowed_subnets == ("10.0.0.0/8", "127.0.0.1/32")


def test_every_option():
    options = parse("--listen", "tcp:2000:interface=127.0.0.1", "--root", "/tmp/x",
                    "--anonymous-access", "full", "--allow-truncate", "--connect-back",
                    "--connect-host", "door.example.org", "--client-version", "2.47:2.47.99",
                    "--no-fsync")
    config = dcap_tap.door_config(options)
    assert config.access is Access.FULL
    assert config.allow_truncate and config.connect_back
    assert config.connect_host == "door.example.org"
    assert (config.client_version_min, config.client_version_max) == ((2, 47), (2, 47, 99))
    service = dcap_tap.makeService(options)
    assert (service.listen, service.root, service.fsync) == ("tcp:2000:interface=127.0.0.1", "/tmp/x", False)


@pytest.mark.parametrize("argv", [("--anonymous-access", "SOME"), ("--client-version", "two"),
                                  ("--trust-client-uid", "everyone"),
                                  ("--allowed-subnets", "10.0.0.0/33"),
                                  ("--max-waiting-opens", "0"), ("--max-file-size", "1.5G"),
                                  ("--max-file-size", "G"), ("--max-file-size", "-1"),
                                  ("--max-logins", "-1"), ("--max-logins-per-peer", "many")])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_service_pickles_as_plain_configuration():
    service = dcap_tap.makeService(parse("--root", "/tmp/y", "--anonymous-access", "NONE"))
    copy = pickle.loads(pickle.dumps(service))
    assert copy.root == "/tmp/y"
    assert copy.config == service.config
    assert copy.port is None and copy.pool is None
