"""Where blocking storage work runs: on the caller's thread, or off the reactor.

The pool and the namespace never call the disk or the database directly
for work that can wait: fsyncs at commit, the copy of an old version for
``rw`` opens, whole-file checksums (``disk``), and every SQLite statement,
which may wait up to the busy timeout while another door holds the write
lock (``database``).

:class:`Inline` runs the work at once and returns its value (or raises):
``dcap-admin`` and unit tests that drive the pool step by step use it.
:class:`ThreadWorkers` returns Deferreds; the door's service owns it and
starts and stops its thread pools with itself.  Callers compose either
form with :func:`then`, so the same code serves both.

All database work goes to ONE thread.  An SQLite connection holds one
transaction at a time and our writes are ``BEGIN IMMEDIATE ... COMMIT`` on
that connection; serialising every statement onto a single worker keeps
exactly the semantics the synchronous engine has (no two transactions
interleave on one connection, no per-thread connections to open, migrate
and close), and a namespace lookup costs one thread hop.  Disk work uses
a few threads of its own, so a long checksum never holds up a lookup.
"""

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from distcache.dcap.namespace import INamespace


def then(result, fn):
    """fn(result) now for a value, after it for a Deferred (whose errors pass on)."""
    if isinstance(result, defer.Deferred):
        return result.addCallback(fn)
    return fn(result)


class Inline:
    """Run storage work at once on the caller's thread; values, not Deferreds."""

    def disk(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def database(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


INLINE = Inline()


@implementer(INamespace)
class OffThreadNamespace:
    """An INamespace whose every call runs on the database worker: Deferreds.

    The door talks to this; the engine behind it is only ever used from
    that one thread (see the module docstring).
    """

    _CALLS = ("lookup", "get", "mkdir", "rmdir", "unlink", "chmod", "chown", "chgrp",
              "rename", "listdir", "open_read", "prepare_write", "commit_write",
              "set_location", "set_staging", "close")

    def __init__(self, engine, workers):
        self.engine = engine
        self.root = engine.root
        for name in self._CALLS:
            setattr(self, name, _on(workers, getattr(engine, name)))
        self._workers = workers

    def walk(self, *args, **kwargs):
        """Every Entry below a path, as a list (the walk runs on the worker)."""
        return self._workers.database(lambda: list(self.engine.walk(*args, **kwargs)))


def _on(workers, method):
    def call(*args, **kwargs):
        return workers.database(method, *args, **kwargs)
    call.__name__ = method.__name__
    return call


class ThreadWorkers(Service):
    """Thread pools for storage work, started and stopped with the door."""

    def __init__(self, reactor=None, disk_threads=4):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._database = ThreadPool(1, 1, name="dcap-database")
        self._disk = ThreadPool(0, disk_threads, name="dcap-disk")

    def startService(self):
        super().startService()
        self._database.start()
        self._disk.start()

    def stopService(self):
        super().stopService()
        self._database.stop()
        self._disk.stop()

    def disk(self, fn, *args, **kwargs):
        return deferToThreadPool(self.reactor, self._disk, fn, *args, **kwargs)

    def database(self, fn, *args, **kwargs):
        return deferToThreadPool(self.reactor, self._database, fn, *args, **kwargs)
