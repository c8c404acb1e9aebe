"""Importing files with arbitrary local names never escapes or stores unreadable names."""

import io
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task

from distcache.dcap.admin import Admin
from distcache.dcap.errors import BadName
from distcache.dcap.names import check_name

local_names = st.text(
    alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1, max_size=40,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(local_names, min_size=1, max_size=6, unique=True))
def test_import_keeps_only_readable_names_inside_the_root(tmp_path, names):
    case = tmp_path / ("case%d" % len(os.listdir(tmp_path)))
    src = case / "src"
    src.mkdir(parents=True)
    for i, name in enumerate(names):
        (src / name).write_bytes(b"%d" % i)
    root = case / "root"
    out, err = io.StringIO(), io.StringIO()
    admin = Admin(str(root), task.Clock(), out, err, fsync=False)
    admin.import_tree(str(src), "/in")
    stored = {e.name for e in admin.ns.walk("/in") if e.path != "/in"}
    admin.ns.close()
    for name in names:
        try:
            check_name(name)
            readable = True
        except BadName:
            readable = False
        assert (name in stored) == readable
    assert admin.failures == sum(1 for n in names if n not in stored)
    assert sorted(os.listdir(case)) == ["root", "src"]
    assert sorted(os.listdir(src)) == sorted(names)
