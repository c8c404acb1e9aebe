"""dcap-admin copy-namespace: SQLite into PostgreSQL and back, on a real server."""

import io

import pytest
import pytest_twisted
from twisted.internet import reactor

from distcache.dcap import admin
from distcache.dcap.namespace import ROOT
from distcache.dcap.pool import open_pool


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return str(path)


def dcap_admin(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    d = admin.run(["--root", root, "--no-fsync"] + list(argv), reactor, out, err)
    return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))


@pytest_twisted.inlineCallbacks
def test_copy_into_postgresql_and_back_keeps_entries_ids_and_data(root, tmp_path, pg_url):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    code, _, err = yield dcap_admin(root, "import", str(src), "/pnfs/data")
    assert code == 0, err
    _, sqlite_listing, _ = yield dcap_admin(root, "list")

    code, out, err = yield dcap_admin(root, "copy-namespace", "sqlite", pg_url)
    assert (code, err) == (0, "")
    assert out.startswith("copied 6 entries from sqlite to ")  # /, pnfs, data, a.txt, sub, b.bin
    code, pg_listing, err = yield dcap_admin(root, "--namespace", pg_url, "list")
    assert code == 0, err
    assert pg_listing == sqlite_listing  # paths, modes, sizes, pnfs ids, checksums

    # new ids in PostgreSQL come after the copied ones
    code, _, err = yield dcap_admin(root, "--namespace", pg_url, "mkdir", "/pnfs/new")
    assert code == 0, err
    _, shown, _ = yield dcap_admin(root, "--namespace", pg_url, "ls", "/pnfs")
    ids = {line.split()[-1]: line.split()[4] for line in shown.splitlines()}
    assert int(ids["new"], 16) > max(int(i, 16) for n, i in ids.items() if n != "new")

    # a non-empty target is refused; --replace copies back over it
    code, _, err = yield dcap_admin(root, "copy-namespace", pg_url, "sqlite")
    assert code == 1 and "not empty" in err
    code, out, err = yield dcap_admin(root, "copy-namespace", pg_url, "sqlite", "--replace")
    assert (code, err) == (0, "") and out.startswith("copied 7 entries")
    _, back, _ = yield dcap_admin(root, "ls", "/pnfs")
    assert back == shown
    # the pool's data files are still found under the copied ids
    pool = open_pool(root)
    entry = pool.namespace.lookup("/pnfs/data/a.txt", ROOT)
    with pool.open_read(entry) as f:
        assert f.read() == b"hello\n"
    pool.namespace.close()


@pytest_twisted.inlineCallbacks
def test_bad_namespace_specs_are_refused(root):
    code, _, err = yield dcap_admin(root, "copy-namespace", "sqlite", "sqlite")
    assert code == 2 and "two different" in err
    code, _, err = yield dcap_admin(root, "copy-namespace", "sqlite", "mysql://x")
    assert code == 1 and "postgresql:// URL" in err
