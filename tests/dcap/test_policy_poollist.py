"""Poollist files."""

import pytest

from distcache.dcap.configsource import ConfigError
from distcache.dcap.poollist import parse_poollist, read_poollist


def test_entry_fields():
    (entry,) = parse_poollist(
        "# pools\n\ndcache30_1  /dcache/pool  sticky=allowed maxSendBufferSize=1048576 "
        "tag.hostname=dcache30  # node 30\n",
        "x.poollist",
    )
    assert (entry.name, entry.path) == ("dcache30_1", "/dcache/pool")
    assert entry.options["sticky"].value == "allowed"
    assert entry.options["maxSendBufferSize"].value == "1048576"
    assert entry.options["maxSendBufferSize"].origin == "x.poollist:3"
    assert entry.tags == {"hostname": "dcache30"}


@pytest.mark.parametrize("text, line, words", [
    ("pool1\n", 1, "no directory"),
    ("p /a\np /b\n", 2, "already defined at x.poollist:1"),
    ("p /a size\n", 1, "key=value"),
    ("p /a sticky=maybe\n", 1, "allowed or denied"),
])
def test_bad_lines(text, line, words):
    with pytest.raises(ConfigError) as e:
        parse_poollist(text, "x.poollist")
    assert str(e.value).startswith(f"x.poollist:{line}: ")
    assert words in str(e.value)


def test_read_from_disk(tmp_path):
    p = tmp_path / "pools.poollist"
    p.write_text("p1 /srv/p1\n")
    assert [e.name for e in read_poollist(p)] == ["p1"]
    with pytest.raises(ConfigError):
        read_poollist(tmp_path / "missing.poollist")
