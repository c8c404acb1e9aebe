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


def test_open_option_policies():
    config = dcap_tap.door_config(parse())
    assert not config.allow_access_latency and not config.allow_retention_policy
    assert config.io_queues == ()
    config = dcap_tap.door_config(parse("--allow-access-latency", "--allow-retention-policy",
                                        "--io-queue", "tape=2", "--io-queue", "wan=5",
                                        "--io-queue", "tape=3"))
    assert config.allow_access_latency and config.allow_retention_policy
    assert config.io_queues == (("wan", 5), ("tape", 3))
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize("argv", [("--anonymous-access", "SOME"), ("--client-version", "two"),
                                  ("--io-queue", "tape"), ("--io-queue", "tape=0"),
                                  ("--io-queue", "default=3")])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        parse(*argv)


def test_service_pickles_as_plain_configuration():
    service = dcap_tap.makeService(parse("--root", "/tmp/y", "--anonymous-access", "NONE"))
    copy = pickle.loads(pickle.dumps(service))
    assert copy.root == "/tmp/y"
    assert copy.config == service.config
    assert copy.port is None and copy.pool is None
