"""The namespace engines: operations, exact door replies, permissions, restarts.

Every test taking ``ns`` runs on the embedded SQLite engine and on a real
PostgreSQL database: both must give the door the same answers.
"""

import pytest

from distcache.dcap.errors import BadName, DcapError, Denied
from distcache.dcap.names import pnfsid_of
from distcache.dcap.namespace import ROOT, Access, INamespace, Subject, listing_text
from distcache.dcap.sqlite_namespace import SQLiteNamespace, open_namespace
from replies import failed_args

ALICE = Subject(1000, 100)
BOB = Subject(2000, 200)


@pytest.fixture(params=["sqlite", "postgresql"])
def ns(request, tmp_path):
    if request.param == "sqlite":
        namespace = open_namespace(str(tmp_path / "root"))
    else:
        from distcache.dcap.postgres_namespace import PostgresNamespace
        namespace = PostgresNamespace(request.getfixturevalue("pg_url"), str(tmp_path))
    yield namespace
    namespace.close()


def reply(exc_info):
    return failed_args(exc_info.value)


def make_file(ns, path, subject=ROOT, mode=0o644, size=0):
    ticket = ns.prepare_write(path, subject, mode)
    new, _old = ns.commit_write(ticket, size, 1, "pool1", lambda pnfsid: None)
    return new


def test_provides_interface(ns):
    assert INamespace.providedBy(ns)


def test_new_namespace_has_root_owned_by_uid0_mode_0755(ns):
    root = ns.lookup("/", ROOT)
    assert (root.uid, root.gid, root.mode, root.type) == (0, 0, 0o755, "d")
    assert root.mode_string == "drwxr-xr-x"
    assert root.ino == 1 and root.pnfsid == "0" * 35 + "1"


def test_mkdir_then_stat(ns):
    e = ns.mkdir("/pnfs", ROOT, 0o755)
    again = ns.lookup("//pnfs/", ROOT)
    assert again == e
    assert len(e.pnfsid) == 36 and int(e.pnfsid, 16) == e.ino
    assert e.st_mode & 0o170000 == 0o040000


def test_mkdir_existing_is_eexist(ns):
    ns.mkdir("/d", ROOT)
    with pytest.raises(DcapError) as e:
        ns.mkdir("/d", ROOT)
    assert reply(e) == '20 "Directory exists" EEXIST'
    make_file(ns, "/f")
    with pytest.raises(DcapError) as e:
        ns.mkdir("/f", ROOT)
    assert reply(e) == '20 "Directory exists" EEXIST'


def test_mkdir_parent_missing_names_the_parent_without_posix_name(ns):
    ns.mkdir("/x", ROOT)
    with pytest.raises(DcapError) as e:
        ns.mkdir("/x/y/z", ROOT)
    assert reply(e) == '10001 "Path /x/y does not exist"'


def test_missing_target_of_namespace_requests(ns):
    for op in (
        lambda: ns.lookup("/nope", ROOT),
        lambda: ns.unlink("/nope", ROOT),
        lambda: ns.chmod("/nope", ROOT, 0o600),
        lambda: ns.chown("/nope", ROOT, 1, 1),
        lambda: ns.rename("/nope", "/other", ROOT),
        lambda: ns.rmdir("/nope", ROOT),
        lambda: ns.listdir("/nope", ROOT),
    ):
        with pytest.raises(DcapError) as e:
            op()
        assert reply(e) == '10001 "No such file or directory" ENOENT'


def test_open_read_replies(ns):
    ns.mkdir("/d", ROOT)
    with pytest.raises(DcapError) as e:
        ns.open_read("/missing", ROOT)
    assert reply(e) == '2 "No such file or directory" ENOENT'
    with pytest.raises(DcapError) as e:
        ns.open_read("/d", ROOT)
    assert reply(e) == '1 "Not a File"'
    make_file(ns, "/secret", mode=0o600)
    with pytest.raises(Denied) as e:
        ns.open_read("/secret", ALICE)
    assert e.value.rc == 19 and e.value.posix == "EACCES"


def test_unlink_of_directory_is_eisdir(ns):
    ns.mkdir("/d", ROOT)
    with pytest.raises(DcapError) as e:
        ns.unlink("/d", ROOT)
    assert reply(e) == '17 "Path is a Directory" EISDIR'


def test_unlink_removes_file(ns):
    f = make_file(ns, "/f", size=3)
    gone = ns.unlink("/f", ROOT)
    assert gone.ino == f.ino
    with pytest.raises(DcapError):
        ns.lookup("/f", ROOT)


def test_rmdir_refusals_are_rc23_eacces(ns):
    ns.mkdir("/d", ROOT)
    make_file(ns, "/d/f")
    make_file(ns, "/plain")
    with pytest.raises(DcapError) as e:
        ns.rmdir("/d", ROOT)
    assert reply(e) == '23 "Directory is not empty" EACCES'
    with pytest.raises(DcapError) as e:
        ns.rmdir("/plain", ROOT)
    assert reply(e) == '23 "Not a directory" EACCES'
    with pytest.raises(DcapError) as e:
        ns.rmdir("/d", ALICE)
    assert e.value.rc == 23 and e.value.posix == "EACCES"
    with pytest.raises(DcapError) as e:
        ns.rmdir("/", ROOT)
    assert e.value.rc == 23
    ns.unlink("/d/f", ROOT)
    ns.rmdir("/d", ROOT)
    assert [c.name for c in ns.listdir("/", ROOT)] == ["plain"]


def test_listdir_sorted_and_listing_text(ns):
    ns.mkdir("/d", ROOT)
    ns.mkdir("/d/ro", ROOT)
    f = make_file(ns, "/d/x", size=17000)
    entries = ns.listdir("/d", ROOT)
    assert [e.name for e in entries] == ["ro", "x"]
    text = listing_text(entries)
    ro = entries[0]
    assert text == ("%s:d:0:ro\n%s:f:17000:x\n" % (ro.pnfsid, f.pnfsid)).encode()


def test_listdir_of_file_is_enotdir(ns):
    make_file(ns, "/f")
    with pytest.raises(DcapError) as e:
        ns.listdir("/f", ROOT)
    assert reply(e) == '22 "/f is not a directory" ENOTDIR'


def test_chmod_by_owner_only(ns):
    ns.chmod("/", ROOT, 0o777)
    d = ns.mkdir("/home", ALICE, 0o755)
    assert (d.uid, d.gid) == (1000, 100)
    assert ns.chmod("/home", ALICE, 0o700).mode == 0o700
    with pytest.raises(DcapError) as e:
        ns.chmod("/home", BOB, 0o777)
    assert e.value.rc == 19 and e.value.posix == "EACCES"
    assert ns.chmod("/home", ROOT, 0o750).mode_string == "drwxr-x---"


def test_chown_root_only_and_chgrp_by_owner_in_group(ns):
    make_file(ns, "/f")
    e = ns.chown("/f", ROOT, 1000, 100)
    assert (e.uid, e.gid) == (1000, 100)
    with pytest.raises(DcapError) as err:
        ns.chown("/f", ALICE, 2000, 200)
    assert err.value.rc == 19
    alice_in_300 = Subject(1000, 100, gids=(300,))
    assert ns.chgrp("/f", alice_in_300, 300).gid == 300
    with pytest.raises(DcapError) as err:
        ns.chgrp("/f", ALICE, 999)
    assert err.value.rc == 19
    with pytest.raises(DcapError):
        ns.chgrp("/f", BOB, 200)


def test_rename_moves_and_refuses_existing_target(ns):
    ns.mkdir("/a", ROOT)
    ns.mkdir("/b", ROOT)
    f = make_file(ns, "/a/f", size=2)
    moved = ns.rename("/a/f", "/b/g", ROOT)
    assert moved.ino == f.ino and moved.path == "/b/g"
    assert ns.lookup("/b/g", ROOT).size == 2
    make_file(ns, "/a/h")
    with pytest.raises(DcapError) as e:
        ns.rename("/a/h", "/b/g", ROOT)
    assert reply(e) == '10008 "File exists" EEXIST'
    with pytest.raises(BadName):
        ns.rename("/a", "/a/inner", ROOT)
    with pytest.raises(DcapError) as e:
        ns.rename("/a/h", "/b/g2", ALICE)
    assert e.value.rc == 19


def test_traversal_needs_search_permission(ns):
    ns.mkdir("/private", ROOT, 0o700)
    make_file(ns, "/private/f", mode=0o644)
    with pytest.raises(Denied):
        ns.lookup("/private/f", ALICE)
    assert ns.lookup("/private/f", ROOT).name == "f"


def test_access_levels(ns):
    make_file(ns, "/f", mode=0o666)
    none = Subject(0, 0, Access.NONE)
    ro = Subject(0, 0, Access.READONLY)
    with pytest.raises(Denied):
        ns.lookup("/f", none)
    assert ns.open_read("/f", ro).name == "f"
    for op in (
        lambda: ns.mkdir("/d", ro),
        lambda: ns.unlink("/f", ro),
        lambda: ns.chmod("/f", ro, 0o600),
        lambda: ns.rename("/f", "/g", ro),
        lambda: ns.prepare_write("/new", ro),
    ):
        with pytest.raises(Denied) as e:
            op()
        assert e.value.rc == 19
    with pytest.raises(DcapError) as e:
        ns.rmdir("/f", ro)
    assert e.value.rc == 23


def test_write_ticket_policy(ns):
    ns.mkdir("/d", ROOT)
    make_file(ns, "/f")
    with pytest.raises(DcapError) as e:
        ns.prepare_write("/f", ROOT, overwrite_hint="ask to truncate")
    assert reply(e) == '1 "File is readOnly: /f exists; ask to truncate"'
    with pytest.raises(DcapError) as e:
        ns.prepare_write("/d", ROOT, replace=True)
    assert reply(e) == '1 "Not a File"'
    with pytest.raises(DcapError) as e:
        ns.prepare_write("/missing/f", ROOT)
    assert reply(e) == '2 "No such file or directory" ENOENT'
    with pytest.raises(Denied):
        ns.prepare_write("/d/new", ALICE)


def test_replace_gives_a_new_pnfsid_and_keeps_metadata(ns):
    ns.chmod("/", ROOT, 0o777)
    old = make_file(ns, "/f", subject=ALICE, mode=0o640, size=5)
    ticket = ns.prepare_write("/f", ALICE, 0o600, replace=True)
    new, replaced = ns.commit_write(ticket, 9, 7, "pool1", lambda pnfsid: None)
    assert replaced.ino == old.ino and new.ino != old.ino
    assert (new.size, new.adler32, new.mode, new.uid) == (9, 7, 0o640, 1000)
    assert ns.lookup("/f", ROOT) == new


def test_concurrent_create_without_replace_loses_at_commit(ns):
    a = ns.prepare_write("/f", ROOT)
    b = ns.prepare_write("/f", ROOT)
    ns.commit_write(a, 1, 1, "pool1", lambda pnfsid: None)
    with pytest.raises(DcapError) as e:
        ns.commit_write(b, 2, 2, "pool1", lambda pnfsid: None)
    assert reply(e) == '1 "File is readOnly: /f exists"'
    assert ns.lookup("/f", ROOT).size == 1


def test_failed_placement_rolls_back(ns):
    ticket = ns.prepare_write("/f", ROOT)

    def broken(pnfsid):
        raise OSError("disk gone")

    with pytest.raises(OSError):
        ns.commit_write(ticket, 1, 1, "pool1", broken)
    with pytest.raises(DcapError):
        ns.lookup("/f", ROOT)


def test_set_location_and_states(ns):
    f = make_file(ns, "/f", size=1)
    assert f.state == "disk"
    f = ns.set_location(f.pnfsid, tape_uri="osm://tape/?bfid=1")
    assert f.state == "disk+tape" and f.path == "/f"
    f = ns.set_location(f.pnfsid, on_disk=False)
    assert f.state == "tape"
    assert ns.get(f.pnfsid) == f


def test_get_refuses_foreign_ids(ns):
    with pytest.raises(BadName):
        ns.get("nonsense")
    with pytest.raises(DcapError) as e:
        ns.get(pnfsid_of(999))
    assert e.value.rc == 10001


def test_walk_lists_the_tree_in_path_order(ns):
    ns.mkdir("/a", ROOT)
    ns.mkdir("/a/b", ROOT)
    make_file(ns, "/a/b/f")
    make_file(ns, "/a/g")
    make_file(ns, "/z")
    assert [e.path for e in ns.walk("/")] == ["/", "/a", "/a/b", "/a/b/f", "/a/g", "/z"]


def test_survives_restart(tmp_path):
    root = str(tmp_path / "root")
    ns = open_namespace(root)
    ns.mkdir("/pnfs", ROOT)
    f = make_file(ns, "/pnfs/f", size=4)
    ns.close()
    again = SQLiteNamespace(root)
    assert again.lookup("/pnfs/f", ROOT) == f
    assert again.lookup("/", ROOT).mode == 0o755
    g = make_file(again, "/pnfs/g")
    assert g.ino > f.ino
    again.close()


def test_ids_are_never_reused(ns):
    f = make_file(ns, "/f")
    ns.unlink("/f", ROOT)
    g = make_file(ns, "/f")
    assert g.ino > f.ino


def test_lookup_uses_the_index(tmp_path):
    ns = open_namespace(str(tmp_path / "root"))
    plan = ns._db.execute(
        "EXPLAIN QUERY PLAN SELECT ino FROM inode WHERE parent = ? AND name = ?", (1, "x")
    ).fetchall()
    assert any("INDEX" in row[-1] and "name=?" in row[-1] for row in plan)


def test_opens_a_namespace_made_before_the_staging_column(tmp_path):
    import sqlite3

    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(str(root / "namespace.db"))
    db.executescript("""
        CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER NOT NULL,
            name TEXT NOT NULL, type TEXT NOT NULL, mode INTEGER NOT NULL,
            uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL DEFAULT 0,
            atime INTEGER NOT NULL, mtime INTEGER NOT NULL, ctime INTEGER NOT NULL,
            adler32 INTEGER, on_disk INTEGER NOT NULL DEFAULT 0, tape_uri TEXT, pool TEXT,
            UNIQUE (parent, name));
        INSERT INTO inode (ino, parent, name, type, mode, uid, gid, atime, mtime, ctime)
            VALUES (1, 0, '', 'd', 493, 0, 0, 1, 1, 1);
        INSERT INTO inode (parent, name, type, mode, uid, gid, size, atime, mtime, ctime)
            VALUES (1, 'kept', 'f', 420, 0, 0, 3, 1, 1, 1);
    """)
    db.close()
    ns = open_namespace(str(root))
    entry = ns.lookup("/kept", ROOT)
    assert entry.size == 3 and entry.staging is None
    ns.close()


def test_refusals_name_whose_entry_which_mode_and_the_fix(ns):
    ns.mkdir("/home", ROOT, 0o750)
    make_file(ns, "/home/f", mode=0o640)
    with pytest.raises(Denied) as e:
        ns.lookup("/home/f", BOB)
    assert reply(e) == ('19 "Permission denied: /home is 0750 owned by uid 0 gid 0, client is'
                        ' uid 2000 gid 200 (anonymous), needs search" EACCES')
    with pytest.raises(Denied) as e:
        ns.chmod("/home", ALICE, 0o777)
    assert reply(e) == ('19 "Permission denied: /home is owned by uid 0, client is uid 1000 gid 100'
                        ' (anonymous); only its owner or uid 0 may chmod it" EACCES')
    readonly = Subject(0, 0, Access.READONLY)
    with pytest.raises(Denied) as e:
        ns.mkdir("/x", readonly)
    assert reply(e) == ('19 "Permission denied: this door\'s anonymous access is READONLY'
                        ' (no changes); --anonymous-access sets it" EACCES')
    with pytest.raises(Denied) as e:
        ns.rmdir("/home", readonly)
    assert e.value.rc == 23 and "READONLY" in e.value.message
