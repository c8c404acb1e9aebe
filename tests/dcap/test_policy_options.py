"""twistd policy options and their resolution at start-up."""

import pytest
from twisted.python import usage

from distcache.dcap.policy import KiB, MiB
from distcache.dcap.policy_options import PolicyOptions, policy_from_options
from distcache.dcap.portrange import PortRange


class DoorOptions(PolicyOptions):
    """Stands for the door's Options, which inherits the mixin."""


def parse(*argv):
    config = DoorOptions()
    config.parseOptions(list(argv))
    return config


def test_defaults_give_the_documented_policy():
    policy = policy_from_options(parse())
    assert policy.buffers.default_send == 256 * KiB
    assert policy.open_timeout is None and policy.keep_alive is None
    assert not policy.strict_check and policy.port_range is None


def test_all_sources_together(tmp_path):
    batch = tmp_path / "door.batch"
    batch.write_text(
        "set context dCap-openTimeout 200\n"
        "set context dCap3-maxSendBufferSize 2097152\n"
        "set printout default 3\n")
    pools = tmp_path / "pools.poollist"
    pools.write_text("pool1 /srv/pool1 sticky=allowed maxRecvBufferSize=524288\n")
    policy = policy_from_options(parse(
        "--batch", str(batch), "--poollist", str(pools),
        "--door-options", "-keepAlive=60 -check=strict",
        "--pool-options", "-defaultSendBufferSize=131072",
        "--portrange", "org.dcache.net.tcp.portrange=33115:33145",
        "--max-io-buffer-size", "65536",
    ))
    assert policy.open_timeout == 200
    assert policy.keep_alive == 60 and policy.strict_check
    assert policy.buffers.max_send == 2 * MiB
    assert policy.buffers.default_send == 128 * KiB
    assert policy.buffers.max_io == 64 * KiB
    assert policy.buffers_for("pool1").max_recv == 512 * KiB
    assert policy.port_range == PortRange(33115, 33145)


def test_plain_options_override_files(tmp_path):
    batch = tmp_path / "door.batch"
    batch.write_text('create dmg.cells.services.login.LoginManager D '
                     '"1 diskCacheV111.doors.DCapDoor -openTimeout=300 -keepAlive=60"\n')
    policy = policy_from_options(parse(
        "--batch", str(batch), "--open-timeout", "3", "--keep-alive", "1",
        "--check", "strict"))
    assert (policy.open_timeout, policy.keep_alive, policy.strict_check) == (3, 1, True)


@pytest.mark.parametrize("argv, words", [
    (["--open-timeout", "soon"], "--open-timeout: openTimeout"),
    (["--check", "strong"], "--check: check must be strict or fuzzy"),
    (["--portrange", "9:1"], "--portrange: "),
    (["--max-send-buffer-size", "1k"], "--max-send-buffer-size: maxSendBufferSize"),
    (["--door-options", "keepAlive=1"], "--door-options: "),
])
def test_bad_options_are_usage_errors(argv, words):
    with pytest.raises(usage.UsageError) as e:
        policy_from_options(parse(*argv))
    assert words in str(e.value)


def test_bad_file_line_is_a_usage_error_naming_it(tmp_path):
    batch = tmp_path / "door.batch"
    batch.write_text("# door\nset context dCap3-defaultRecvBufferSize many\n")
    with pytest.raises(usage.UsageError) as e:
        policy_from_options(parse("--batch", str(batch)))
    assert str(e.value).startswith(f"{batch}:2: defaultRecvBufferSize")


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError) as e:
        policy_from_options(parse("--poollist", str(tmp_path / "none.poollist")))
    assert "none.poollist" in str(e.value)


def test_door_options_carry_the_policy_into_a_picklable_service(tmp_path):
    import pickle

    from distcache import dcap_tap

    config = dcap_tap.Options()
    config.parseOptions(["--root", str(tmp_path), "--open-timeout", "7",
                         "--keep-alive", "2", "--portrange", "33115:33145"])
    service = dcap_tap.makeService(config)
    again = pickle.loads(pickle.dumps(service))
    assert again.policy.open_timeout == 7 and again.policy.keep_alive == 2
    assert again.policy.port_range == PortRange(33115, 33145)


def test_door_refuses_to_start_with_a_bad_batch_line(tmp_path):
    from distcache import dcap_tap

    batch = tmp_path / "door.batch"
    batch.write_text("set context dCap-openTimeout forever\n")
    with pytest.raises(usage.UsageError) as e:
        dcap_tap.Options().parseOptions(["--batch", str(batch)])
    assert str(e.value).startswith(f"{batch}:1: openTimeout")
