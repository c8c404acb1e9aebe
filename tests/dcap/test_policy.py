"""Policy resolution, buffer clamping and openTimeout precedence."""

import socket

import pytest
from hypothesis import given, strategies as st

from distcache.dcap.batchfile import parse_batch, parse_option_line
from distcache.dcap.configsource import ConfigError, Setting
from distcache.dcap.policy import (
    BufferLimits,
    DcapPolicy,
    KiB,
    MiB,
    TransferBuffers,
    apply_buffers,
    apply_transfer_buffers,
    client_buffer_request,
    client_open_timeout,
    resolve_policy,
    transfer_buffers,
)
from distcache.dcap.poollist import parse_poollist
from distcache.dcap.portrange import PortRange


def cli(**values):
    return {k: Setting(str(v), "--" + k) for k, v in values.items()}


# Buffer sizes ---------------------------------------------------------------

def test_documented_defaults():
    limits = resolve_policy().buffers
    assert limits == BufferLimits(256 * KiB, 256 * KiB, MiB, MiB, MiB, 4 * MiB)


def test_no_request_gets_the_default():
    assert transfer_buffers(BufferLimits()) == TransferBuffers(256 * KiB, 256 * KiB, MiB)


def test_small_request_is_honoured_and_large_is_clamped():
    b = transfer_buffers(BufferLimits(), send=64 * KiB, receive=8 * MiB, bsize=8 * MiB)
    assert b == TransferBuffers(64 * KiB, MiB, 4 * MiB)


def test_default_above_max_is_clamped():
    limits = BufferLimits(default_send=4 * MiB, max_send=2 * MiB)
    assert transfer_buffers(limits).send == 2 * MiB


@given(
    req=st.one_of(st.none(), st.integers(-5, 1 << 31)),
    default=st.integers(1024, 1 << 24),
    maximum=st.integers(1024, 1 << 24),
)
def test_effective_is_min_of_request_or_default_and_max(req, default, maximum):
    limits = BufferLimits(default_send=default, max_send=maximum)
    got = transfer_buffers(limits, send=req).send
    wanted = req if req is not None and req > 0 else default
    assert got == min(wanted, maximum)
    assert got <= maximum


def test_client_request_from_open_options():
    assert client_buffer_request({"send": "1000", "receive": "x"}) == {
        "send": 1000, "receive": None, "bsize": None}


def test_apply_buffers_reads_back_from_the_socket():
    s = socket.socket()
    try:
        reported = apply_buffers(s, TransferBuffers(64 * KiB, 96 * KiB, 0))
        # Linux doubles what it is given and reports the doubled value.
        assert reported == (
            s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        )
        assert reported[0] in (64 * KiB, 128 * KiB)
        assert reported[1] in (96 * KiB, 192 * KiB)
    finally:
        s.close()


def test_apply_transfer_buffers_on_a_transport_without_socket():
    class NoHandle:
        pass

    assert apply_transfer_buffers(NoHandle(), TransferBuffers(1, 1, 1)) is None


def test_buffer_precedence_pool_option_context_cli():
    batch = parse_batch(
        "set context dCap3-maxSendBufferSize 2097152\n"
        'create diskCacheV111.pools.MultiProtocolPool2 p "-maxSendBufferSize=524288 '
        '-defaultRecvBufferSize=131072 -maxIoBufferSize=65536"\n',
        "pool.batch",
    )
    limits = resolve_policy(batch).buffers
    # dCache's mover reads the context before the create line.
    assert limits.max_send == 2 * MiB
    assert limits.default_recv == 128 * KiB
    assert limits.max_io == 64 * KiB
    limits = resolve_policy(batch, explicit=cli(maxSendBufferSize=65536)).buffers
    assert limits.max_send == 64 * KiB


def test_poollist_buffers_per_pool():
    pools = parse_poollist(
        "pool1 /srv/p1 sticky=allowed maxSendBufferSize=524288 tag.hostname=n1\n"
        "pool2 /srv/p2\n",
        "x.poollist",
    )
    policy = resolve_policy(poollist=pools)
    assert policy.buffers_for("pool1").max_send == 512 * KiB
    assert policy.buffers_for("pool2").max_send == MiB
    assert policy.buffers_for("unknown") == policy.buffers
    assert policy.buffers_for() == policy.buffers


@pytest.mark.parametrize("bad", ["big", "-5", "12.5", "100", "99999999999"])
def test_bad_buffer_value_names_file_and_line(bad):
    batch = parse_batch(f"\nset context dCap3-maxRecvBufferSize {bad}\n", "pool.batch")
    with pytest.raises(ConfigError) as e:
        resolve_policy(batch)
    assert str(e.value).startswith("pool.batch:2: maxRecvBufferSize")


def test_bad_poollist_buffer_names_file_and_line():
    pools = parse_poollist("pool1 /p maxSendBufferSize=lots\n", "a.poollist")
    with pytest.raises(ConfigError) as e:
        resolve_policy(poollist=pools)
    assert str(e.value).startswith("a.poollist:1: ")


# openTimeout precedence -----------------------------------------------------

LEVELS = [
    ("set context dCap-openTimeout 10\n", None, None, 10),
    ("set context dCap-openTimeout 10\nset context openTimeout 20\n", None, None, 20),
    ("set context dCap-openTimeout 10\nset context openTimeout 20\n", "-openTimeout=30", None, 30),
    ("set context dCap-openTimeout 10\nset context openTimeout 20\n", "-openTimeout=30", 40, 40),
]


@pytest.mark.parametrize("context, door, option, expected", LEVELS)
def test_open_timeout_each_level_overrides_the_one_below(context, door, option, expected):
    batch = parse_batch(context, "door.batch")
    door_options = parse_option_line(door, "--door-options") if door else None
    explicit = cli(openTimeout=option) if option is not None else None
    policy = resolve_policy(batch, door_options=door_options, explicit=explicit)
    assert policy.open_timeout == expected
    # The client's -timeout beats all of them; dccp's -1 means "not set".
    assert policy.open_deadline_seconds("5") == 5
    assert policy.open_deadline_seconds("-1") == expected


def test_door_create_line_open_timeout_in_batch_beats_context():
    batch = parse_batch(
        "set context openTimeout 20\n"
        'create dmg.cells.services.login.LoginManager D "1 diskCacheV111.doors.DCapDoor '
        '-openTimeout=300 -keepAlive=60"\n'
    )
    policy = resolve_policy(batch)
    assert (policy.open_timeout, policy.keep_alive) == (300, 60)
    assert policy.enforces_open_timeout


def test_no_timeout_anywhere():
    policy = resolve_policy()
    assert policy.open_timeout is None
    assert policy.open_deadline_seconds("-1") is None
    assert not policy.enforces_open_timeout


@pytest.mark.parametrize("value, seconds", [
    (None, None), ("-1", None), ("0", None), ("abc", None), ("7", 7), (3, 3)])
def test_client_open_timeout(value, seconds):
    assert client_open_timeout(value) == seconds


def test_bad_open_timeout_names_origin():
    with pytest.raises(ConfigError) as e:
        resolve_policy(parse_batch("set context dCap-openTimeout soon\n", "d.batch"))
    assert str(e.value).startswith("d.batch:1: openTimeout")
    with pytest.raises(ConfigError) as e:
        resolve_policy(explicit=cli(keepAlive="-3"))
    assert str(e.value).startswith("--keepAlive: keepAlive")


# check and port range ---------------------------------------------------------

def test_check_strict_and_fuzzy():
    assert resolve_policy(door_options=parse_option_line("-check=strict", "x")).strict_check
    assert not resolve_policy(explicit=cli(check="fuzzy")).strict_check
    assert not resolve_policy().strict_check
    with pytest.raises(ConfigError) as e:
        resolve_policy(explicit=cli(check="strong"))
    assert "strict or fuzzy" in str(e.value)


def test_cli_check_overrides_door_option():
    policy = resolve_policy(
        door_options=parse_option_line("-check=strict", "x"), explicit=cli(check="fuzzy"))
    assert not policy.strict_check


def test_port_range_both_forms():
    assert resolve_policy(explicit=cli(portrange="33115:33145")).port_range == PortRange(33115, 33145)
    assert resolve_policy(
        explicit=cli(portrange="org.dcache.net.tcp.portrange=33115:33145")
    ).port_range == PortRange(33115, 33145)
    assert resolve_policy().port_range is None


def test_policy_is_immutable_and_picklable():
    import pickle

    policy = resolve_policy(poollist=parse_poollist("p /x maxSendBufferSize=4096\n"))
    with pytest.raises(Exception):
        policy.open_timeout = 3
    with pytest.raises(TypeError):
        policy.pool_buffers[0] = ("q", BufferLimits())
    assert isinstance(policy, DcapPolicy)
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_check_precedence_context_door_cli():
    batch = parse_batch("set context dCapDoor-check strict\n")
    assert resolve_policy(batch).strict_check
    assert not resolve_policy(batch, door_options=parse_option_line("-check=fuzzy", "x")).strict_check
    assert resolve_policy(batch, door_options=parse_option_line("-check=fuzzy", "x"),
                          explicit=cli(check="strict")).strict_check
