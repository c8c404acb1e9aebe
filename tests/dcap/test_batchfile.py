"""Batch (context) files as dCache administrators write them."""

import pytest

from distcache.dcap.batchfile import parse_batch, parse_option_line, read_batch
from distcache.dcap.configsource import ConfigError

DOOR_BATCH = """\
# dCap door
set context dCap-openTimeout 200
set context dCap3-maxSendBufferSize 1048576

create dmg.cells.services.login.LoginManager DCap-2 \\
            "${specialDCapPort} \\
             diskCacheV111.doors.DCapDoor \\
             -export \\
             -keepAlive=60 \\
             -openTimeout=300 \\
             -check=strict \\
             -loginBroker=LoginBroker"
create diskCacheV111.pools.MultiProtocolPool2 pool1 \\
  "!MoverMap -defaultSendBufferSize=131072 -maxRecvBufferSize=524288"
set printout default 3
"""


def test_context_entries_keep_value_and_line():
    batch = parse_batch(DOOR_BATCH, "door.batch")
    assert batch.context["dCap-openTimeout"].value == "200"
    assert batch.context["dCap-openTimeout"].origin == "door.batch:2"
    assert batch.context["dCap3-maxSendBufferSize"].value == "1048576"


def test_door_create_line_options():
    batch = parse_batch(DOOR_BATCH, "door.batch")
    assert batch.door_options["keepAlive"].value == "60"
    assert batch.door_options["openTimeout"].value == "300"
    assert batch.door_options["check"].value == "strict"
    assert batch.door_options["export"].value == ""
    # A continued line is reported at the line where it starts.
    assert batch.door_options["keepAlive"].origin == "door.batch:5"


def test_pool_create_line_options():
    batch = parse_batch(DOOR_BATCH, "door.batch")
    assert batch.pool_options["defaultSendBufferSize"].value == "131072"
    assert batch.pool_options["maxRecvBufferSize"].value == "524288"
    assert "keepAlive" not in batch.pool_options


def test_other_commands_are_reported_not_applied():
    batch = parse_batch(DOOR_BATCH, "door.batch")
    assert [o for o, _ in batch.ignored] == ["door.batch:15"]


def test_later_entry_wins():
    batch = parse_batch("set context openTimeout 5\nset context openTimeout 7\n")
    assert batch.context["openTimeout"].value == "7"


@pytest.mark.parametrize(
    "text, line",
    [
        ("set context dCap-openTimeout\n", 1),
        ("\n\nset context\n", 3),
        ('create x.DCapDoor d "-keepAlive=1\n', 1),
        ("# ok\ncreate\n", 2),
    ],
)
def test_malformed_lines_name_file_and_line(text, line):
    with pytest.raises(ConfigError) as e:
        parse_batch(text, "x.batch")
    assert str(e.value).startswith(f"x.batch:{line}: ")


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "none.batch"
    with pytest.raises(ConfigError) as e:
        read_batch(missing)
    assert str(missing) in str(e.value)


def test_read_batch_from_disk(tmp_path):
    p = tmp_path / "d.batch"
    p.write_text("set context openTimeout 9\n")
    assert read_batch(p).context["openTimeout"].origin == f"{p}:1"


def test_option_line():
    opts = parse_option_line("-openTimeout=300 -keepAlive=60 -check=strict", "--door-options")
    assert {k: v.value for k, v in opts.items()} == {
        "openTimeout": "300", "keepAlive": "60", "check": "strict"}
    with pytest.raises(ConfigError):
        parse_option_line("openTimeout=300", "--door-options")


from hypothesis import given, strategies as st  # noqa: E402

from distcache.dcap.policy import resolve_policy  # noqa: E402
from distcache.dcap.poollist import parse_poollist  # noqa: E402

WORDS = st.sampled_from([
    "set", "context", "create", "dCap-openTimeout", "openTimeout", "dCap3-maxSendBufferSize",
    "dCap3-defaultIoBufferSize", "dCapDoor-check", "strict", "-keepAlive=", "-openTimeout=",
    "-check=", "diskCacheV111.doors.DCapDoor", "MultiProtocolPool2", "LoginManager",
    '"', "\\", "#", "=", "-", "12", "-3", "x", "sticky=maybe", "tag.h=1", "\t",
])


@given(st.lists(st.lists(st.one_of(WORDS, st.text(max_size=6)), max_size=8), max_size=12))
def test_random_batch_files_give_a_policy_or_a_config_error(lines):
    text = "\n".join(" ".join(words) for words in lines)
    try:
        resolve_policy(parse_batch(text, "f.batch"))
    except ConfigError as e:
        assert str(e).startswith("f.batch:")


@given(st.lists(st.lists(st.one_of(WORDS, st.text(max_size=6)), max_size=8), max_size=12))
def test_random_poollists_give_a_policy_or_a_config_error(lines):
    text = "\n".join(" ".join(words) for words in lines)
    try:
        resolve_policy(poollist=parse_poollist(text, "p.poollist"))
    except ConfigError as e:
        assert str(e).startswith("p.poollist:")
