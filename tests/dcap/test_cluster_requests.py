"""A door's remote opens on a real PostgreSQL, with the answer deadline on a task.Clock."""

import psycopg
import pytest
from twisted.internet import task

from distcache.dcap.cluster import Cluster
from distcache.dcap.cluster_db import LISTENING, DONE
from distcache.dcap.namespace import Access, Subject
from distcache.dcap.pool import open_pool
from distcache.dcap.workers import INLINE

ALICE = Subject(1000, 100, Access.FULL, gids=(7,), user="alice")


class Recorder:
    """The session's side of a remote open: what the door would send."""

    sid, cid, tid = 5, 0, 1

    def __init__(self):
        self.lines = []
        self.connected = 0

    def listening(self, port, line):
        port.stopListening()
        self.lines.append(line)

    def mover_connected(self):
        self.connected += 1


@pytest.fixture
def cluster(pg_url, tmp_path):
    pool = open_pool(str(tmp_path / "a"), namespace=pg_url, name="pool-a")
    clock = task.Clock()
    c = Cluster(pg_url, pool, None, INLINE, clock, "127.0.0.1", 22125)
    yield c
    c.db.close()
    pool.engine.close()


def outcome_of(transfer):
    seen = []
    transfer.outcome.addCallback(seen.append)
    return seen


def test_an_unregistered_pool_is_refused_at_once(cluster):
    t = cluster.remote_open(Recorder(), "pool-x", "r", "/f", ALICE)
    seen = outcome_of(t)
    t.start(Recorder())
    assert seen[0].message == "Pool pool-x holding the file is not registered"


def test_a_pool_that_never_answers_fails_the_open_at_the_deadline(cluster, pg_url):
    cluster.db.heartbeat("pool-b", "10.0.0.2", 22126, 1 << 30)
    session = Recorder()
    t = cluster.remote_open(session, "pool-b", "r", "/f", ALICE)
    seen = outcome_of(t)
    t.start(session)
    assert t.rid in cluster.waiting and not seen
    cluster.reactor.advance(14.9)
    assert not seen
    cluster.reactor.advance(0.2)
    assert seen[0].message == ("Pool pool-b at 10.0.0.2:22126 did not answer within 15 s: "
                               "it is down or unreachable")
    assert t.rid not in cluster.waiting
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT state, uid, gids, user_name FROM mover_request"
                           " WHERE id = %s", (t.rid,)).fetchone()
    assert row == ("cancelled", 1000, [7], "alice")  # withdrawn, with who asked


def test_the_serving_pools_answers_are_relayed_to_the_client(cluster):
    cluster.db.heartbeat("pool-b", "10.0.0.2", 22126, 1 << 30)
    session = Recorder()
    t = cluster.remote_open(session, "pool-b", "w", "/new", ALICE, 0o600, False, "hint")
    seen = outcome_of(t)
    t.start(session)
    taken = cluster.db.claim("pool-b")
    assert [(r["id"], r["mode"], r["create_mode"], r["sid"]) for r in taken] == \
        [(t.rid, "w", 0o600, 5)]
    cluster.db.reply(t.rid, LISTENING, host="10.0.0.2", port=31000, challenge="c1")
    cluster._refresh([t.rid])
    assert session.lines == [b"5 0 client connect 10.0.0.2 31000 c1\n"]
    cluster.reactor.advance(60)  # the answer came: no deadline any more
    assert not seen
    cluster.db.reply(t.rid, DONE, moved=(1234, 0))
    cluster._refresh([t.rid])
    assert seen == [None] and (t.bytes_in, t.bytes_out) == (1234, 0)


def test_notifications_coming_back_sweep_the_pool_for_removals_missed_meanwhile(cluster):
    swept = []
    cluster.pool.sweep_orphans = lambda: swept.append(True) or []
    cluster._notified(None, None)   # the first connection: start-up swept already
    assert swept == []
    cluster._notified(None, None)   # back after a loss: removals may have been missed
    assert swept == [True]


def test_a_discard_notice_for_this_pool_deletes_that_data_and_no_other(cluster):
    asked = []
    cluster.pool.discard_orphan = asked.append
    cluster._notified("dcap_discard", "pool-b 000000000000000000000000000A")
    cluster._notified("dcap_discard", "pool-a 000000000000000000000000000B")
    assert asked == ["000000000000000000000000000B"]
