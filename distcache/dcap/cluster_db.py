"""What door+pool nodes sharing a PostgreSQL namespace keep in it, and how they hear of it.

``pool_node``: each pool's name, the host its movers are reached at, its
door's port and its free space, refreshed by a heartbeat.
``mover_request``: a door asking another node's pool to start a mover for
one of its clients; that node writes back where it listens (host, port,
challenge) and, later, how the transfer ended.

Changes are announced with NOTIFY: on ``dcap_mover`` (payload: the pool
name) when a request is new or cancelled, on ``dcap_mover_reply`` (payload:
the request id) when the serving node wrote something back.  The
functions here block; nodes call them on their database worker, and
:class:`Listener` runs LISTEN on a connection and thread of its own.
"""

import threading
import time

import psycopg
from twisted.logger import Logger

from distcache.dcap.postgres_namespace import connect, unavailable

log = Logger()

REQUESTS = "dcap_mover"
REPLIES = "dcap_mover_reply"
#: payload "POOL PNFSID": a file whose data POOL holds was removed or replaced
DISCARDS = "dcap_discard"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pool_node (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        door_port INTEGER NOT NULL,
        free_bytes BIGINT NOT NULL,
        seen TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS mover_request (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        pool TEXT NOT NULL,
        door TEXT NOT NULL,
        sid BIGINT NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('r', 'w', 'rw')),
        path TEXT NOT NULL,
        uid BIGINT NOT NULL,
        gid BIGINT NOT NULL,
        gids BIGINT[] NOT NULL DEFAULT '{}',
        user_name TEXT NOT NULL DEFAULT '',
        access TEXT NOT NULL,
        create_mode INTEGER NOT NULL DEFAULT 420,
        replace BOOLEAN NOT NULL DEFAULT false,
        overwrite_hint TEXT,
        state TEXT NOT NULL DEFAULT 'new',
        host TEXT,
        port INTEGER,
        challenge TEXT,
        rc INTEGER,
        message TEXT,
        posix TEXT,
        bytes_in BIGINT NOT NULL DEFAULT 0,
        bytes_out BIGINT NOT NULL DEFAULT 0,
        created TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS mover_request_open ON mover_request (pool, state)",
)

#: States of a mover request, in order; the last three are final.
NEW, TAKEN, LISTENING, CONNECTED, DONE, FAILED, CANCELLED = (
    "new", "taken", "listening", "connected", "done", "failed", "cancelled")
FINAL = (DONE, FAILED, CANCELLED)

REQUEST_FIELDS = ("id", "pool", "door", "sid", "mode", "path", "uid", "gid", "gids", "user_name",
                  "access",
                  "create_mode", "replace", "overwrite_hint")
REPLY_FIELDS = ("id", "state", "host", "port", "challenge", "rc", "message", "posix",
                "bytes_in", "bytes_out")


class ClusterDB:
    """Blocking statements on the node's own connection (used from one thread)."""

    def __init__(self, url):
        self.url = url
        self._conn = None
        with self._cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (0x44434151,))
            try:
                for statement in SCHEMA:
                    cur.execute(statement)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (0x44434151,))

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _cursor(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.url)
        return _Cursor(self._conn)

    def heartbeat(self, name, host, door_port, free_bytes):
        """Register or refresh this pool; every pool as (name, host, port, free, age s)."""
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO pool_node (name, host, door_port, free_bytes, seen)"
                " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (name) DO UPDATE SET"
                " host = EXCLUDED.host, door_port = EXCLUDED.door_port,"
                " free_bytes = EXCLUDED.free_bytes, seen = now()",
                (name, host, door_port, free_bytes))
            cur.execute("SELECT name, host, door_port, free_bytes,"
                        " EXTRACT(EPOCH FROM now() - seen)::float FROM pool_node ORDER BY name")
            rows = cur.fetchall()
            # housekeeping: answered requests are kept an hour for operators, then dropped
            cur.execute("DELETE FROM mover_request WHERE state = ANY(%s)"
                        " AND created < now() - interval '1 hour'", (list(FINAL),))
            return rows

    def request(self, fields, down_after):
        """File a mover request (a dict of REQUEST_FIELDS but id) with a pool that is up.

        Returns (id, pool row); id is None when the pool is unknown (row
        None) or its last heartbeat is down_after seconds old or more.
        Rows are (name, host, door port, free bytes, age in seconds).
        """
        names = [f for f in REQUEST_FIELDS if f != "id"]
        with self._cursor() as cur:
            cur.execute("SELECT name, host, door_port, free_bytes,"
                        " EXTRACT(EPOCH FROM now() - seen)::float FROM pool_node WHERE name = %s",
                        (fields["pool"],))
            node = cur.fetchone()
            if node is None or node[4] >= down_after:
                return None, node
            cur.execute("INSERT INTO mover_request (%s) VALUES (%s) RETURNING id"
                        % (", ".join(names), ", ".join(["%s"] * len(names))),
                        [fields[f] for f in names])
            rid = cur.fetchone()[0]
            cur.execute("SELECT pg_notify(%s, %s)", (REQUESTS, fields["pool"]))
        return rid, node

    def cancel(self, rid, pool):
        """Withdraw a request the door no longer needs (its session ended)."""
        with self._cursor() as cur:
            cur.execute("UPDATE mover_request SET state = %s WHERE id = %s AND state <> ALL(%s)",
                        (CANCELLED, rid, list(FINAL)))
            cur.execute("SELECT pg_notify(%s, %s)", (REQUESTS, pool))

    def discarded(self, pool, pnfsid):
        """Ask the pool that holds a removed file's data to delete it."""
        with self._cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (DISCARDS, "%s %s" % (pool, pnfsid)))

    def claim(self, pool):
        """Take this pool's new requests: a list of dicts of REQUEST_FIELDS."""
        with self._cursor() as cur:
            cur.execute("UPDATE mover_request SET state = %s WHERE pool = %s AND state = %s"
                        " RETURNING %s" % ("%s", "%s", "%s", ", ".join(REQUEST_FIELDS)),
                        (TAKEN, pool, NEW))
            return [dict(zip(REQUEST_FIELDS, row)) for row in cur.fetchall()]

    def cancelled(self, ids):
        """Which of these request ids the requesting door has cancelled."""
        if not ids:
            return []
        with self._cursor() as cur:
            cur.execute("SELECT id FROM mover_request WHERE id = ANY(%s) AND state = %s",
                        (list(ids), CANCELLED))
            return [row[0] for row in cur.fetchall()]

    def reply(self, rid, state, host=None, port=None, challenge=None, error=None, moved=(0, 0)):
        """Write back a request's progress and tell the door."""
        rc = message = posix = None
        if error is not None:
            rc, message, posix = error.rc, error.message, error.posix
        with self._cursor() as cur:
            cur.execute("UPDATE mover_request SET state = %s, host = COALESCE(%s, host),"
                        " port = COALESCE(%s, port), challenge = COALESCE(%s, challenge),"
                        " rc = %s, message = %s, posix = %s, bytes_in = %s, bytes_out = %s"
                        " WHERE id = %s AND state <> ALL(%s)",
                        (state, host, port, challenge, rc, message, posix, moved[0], moved[1],
                         rid, list(FINAL)))
            cur.execute("SELECT pg_notify(%s, %s)", (REPLIES, str(rid)))

    def replies(self, ids):
        """The current reply fields of these requests: dicts of REPLY_FIELDS."""
        if not ids:
            return []
        with self._cursor() as cur:
            cur.execute("SELECT %s FROM mover_request WHERE id = ANY(%%s)" % ", ".join(REPLY_FIELDS),
                        (list(ids),))
            return [dict(zip(REPLY_FIELDS, row)) for row in cur.fetchall()]


class _Cursor:
    """A cursor whose connection errors become the namespace's clear refusal."""

    def __init__(self, conn):
        self._conn = conn
        self._cur = None

    def __enter__(self):
        self._cur = self._conn.cursor()
        return self._cur

    def __exit__(self, exc_type, exc, tb):
        self._cur.close()
        if exc_type is not None and issubclass(exc_type, psycopg.OperationalError):
            raise unavailable(exc) from None
        return False


class Listener:
    """LISTEN on its own connection in its own thread; notifications go to the reactor.

    deliver(channel, payload) runs on the reactor thread.  After the
    connection is lost and made again, deliver(None, None) says that
    notifications may have been missed.  The connection is logged once
    when lost and once when back.
    """

    def __init__(self, url, channels, deliver, reactor, poll=0.5, retry=1.0):
        self.url = url
        self.channels = channels
        self.deliver = deliver
        self.reactor = reactor
        self.poll = poll
        self.retry = retry
        self._stop = threading.Event()
        self._thread = None
        self.connected = threading.Event()

    def start(self):
        self._thread = threading.Thread(target=self._run, name="dcap-listen", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self):
        down = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    for channel in self.channels:
                        conn.execute("LISTEN %s" % channel)
                    self.connected.set()
                    if down:
                        log.info("notifications from the namespace database are back")
                        down = False
                    self.reactor.callFromThread(self.deliver, None, None)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=self.poll):
                            self.reactor.callFromThread(self.deliver, n.channel, n.payload)
            except psycopg.Error as e:
                self.connected.clear()
                if not down:
                    log.warn("lost notifications from the namespace database: {error}",
                             error=str(e).strip().splitlines()[0] if str(e).strip() else e)
                    down = True
                deadline = time.monotonic() + self.retry
                while not self._stop.is_set() and time.monotonic() < deadline:
                    self._stop.wait(0.1)
