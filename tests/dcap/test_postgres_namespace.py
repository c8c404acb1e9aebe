"""The PostgreSQL engine on a real server: several doors, restarts, a lost connection."""

import multiprocessing

import psycopg
import pytest

from distcache.dcap.errors import DcapError
from distcache.dcap.namespace import ROOT
from distcache.dcap.engines import is_postgres
from distcache.dcap.postgres_namespace import PostgresNamespace


def make_file(ns, path, size=0):
    ticket = ns.prepare_write(path, ROOT)
    return ns.commit_write(ticket, size, 1, "pool1", lambda pnfsid: None)[0]


def test_url_forms():
    assert is_postgres("postgresql://u@h/db") and is_postgres("postgres://h/db")
    assert not is_postgres("/var/dcap") and not is_postgres(None) and not is_postgres("sqlite")


def test_a_second_door_sees_the_tree_and_ids_go_on(pg_url, tmp_path):
    a = PostgresNamespace(pg_url, str(tmp_path))
    a.mkdir("/pnfs", ROOT)
    f = make_file(a, "/pnfs/f", 4)
    a.close()
    b = PostgresNamespace(pg_url, str(tmp_path))
    assert b.lookup("/pnfs/f", ROOT) == f
    assert make_file(b, "/pnfs/g").ino > f.ino
    b.close()


def _worker(url, tag, count, results):
    ns = PostgresNamespace(url)
    won = renamed = 0
    for i in range(count):
        make_file(ns, "/shared/%s-%d" % (tag, i), i)
        try:
            ns.mkdir("/shared/race-%d" % i, ROOT)
            won += 1
        except DcapError as e:
            assert e.rc == 20
        try:
            ns.rename("/shared/race-%d" % i, "/shared/moved-%d" % i, ROOT)
            renamed += 1
        except DcapError as e:
            assert e.rc in (10001, 10008)
    ns.close()
    results.put((tag, won, renamed))


def test_racing_doors_are_settled_by_the_database(pg_url):
    ns = PostgresNamespace(pg_url)
    ns.mkdir("/shared", ROOT)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    count = 30
    workers = [ctx.Process(target=_worker, args=(pg_url, tag, count, results))
               for tag in ("a", "b", "c")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    outcome = [results.get(timeout=5) for _ in workers]
    names = [e.name for e in ns.listdir("/shared", ROOT)]
    assert len([n for n in names if n[0] in "abc"]) == 3 * count
    won = sum(w for _, w, _ in outcome)
    renamed = sum(r for _, _, r in outcome)
    # each moved-i is made exactly once; a race-i made after its move stays
    assert renamed == count
    assert sorted(n for n in names if n.startswith("moved-")) == \
        sorted("moved-%d" % i for i in range(count))
    assert len([n for n in names if n.startswith("race-")]) == won - renamed
    ns.close()


def test_a_lost_connection_fails_one_operation_clearly_then_reconnects(pg_url):
    ns = PostgresNamespace(pg_url)
    ns.mkdir("/d", ROOT)
    pid = ns.connection().info.backend_pid
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DcapError) as e:
        ns.lookup("/d", ROOT)
    assert e.value.rc == 5 and "Namespace database unavailable" in e.value.message
    assert ns.lookup("/d", ROOT).is_dir
    assert ns.connection().info.backend_pid != pid
    ns.close()


def test_an_unreachable_database_is_refused_at_once(postgres_server):
    from cache_support import free_tcp_port
    with pytest.raises(DcapError) as e:
        PostgresNamespace("postgresql://postgres@127.0.0.1:%d/none" % free_tcp_port())
    assert "Namespace database unavailable" in e.value.message
