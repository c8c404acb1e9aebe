"""Path confinement and name validation, over random input."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcache.dcap.errors import BadName, DcapError
from distcache.dcap.names import check_name, split_path
from distcache.dcap.namespace import ROOT, listing_text
from distcache.dcap.sqlite_namespace import open_namespace
from replies import failed_args

segments = st.one_of(
    st.sampled_from(["..", ".", "", "%2e%2e", "a:b", "x\x00y", "\u00e9t\u00e9", "a\nb",
                     'q"uote', "ok", "pnfs", "-", " sp ace "]),
    st.text(max_size=20),
)
paths = st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts))


@given(st.text(max_size=300))
def test_split_path_raises_only_badname(text):
    try:
        parts = split_path(text)
    except BadName as e:
        assert e.rc == 10015 and e.posix == "EINVAL"
        return
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part and ":" not in part and '"' not in part
        assert all(32 <= ord(c) < 127 for c in part)


@pytest.mark.parametrize("name", ["..", "a\x00", "caf\u00e9", "a:b", "line\nbreak", 'a"b',
                                  "tab\t", "x" * 256, ""])
def test_unreadable_or_escaping_names_are_refused(name):
    with pytest.raises(BadName):
        check_name(name)


def test_dotdot_never_climbs(tmp_path):
    ns = open_namespace(str(tmp_path / "r"))
    ns.mkdir("/a", ROOT)
    with pytest.raises(BadName):
        ns.lookup("/a/../a", ROOT)
    with pytest.raises(BadName):
        ns.mkdir("/a/..", ROOT)
    assert ns.lookup("/a/./", ROOT).path == "/a"
    ns.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(paths)
def test_random_paths_create_only_readable_names(tmp_path, path):
    ns = open_namespace(str(tmp_path / "r"))
    try:
        for op in ("mkdir", "lookup", "prepare"):
            try:
                if op == "mkdir":
                    ns.mkdir(path, ROOT)
                elif op == "lookup":
                    entry = ns.lookup(path, ROOT)
                    assert entry.path == "/" + "/".join(split_path(path))
                else:
                    ns.prepare_write(path, ROOT, replace=True)
            except DcapError as e:
                assert isinstance(e.rc, int)
                failed_args(e).encode("ascii")
        for entry in ns.walk("/"):
            if entry.path == "/":
                continue
            line = listing_text([entry]).decode("ascii")
            assert line.rstrip("\n").rsplit(":", 1)[1] == entry.name
            assert ".." not in entry.path.split("/")
    finally:
        ns.close()
