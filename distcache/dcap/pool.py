"""The pool: file data by pnfs id, atomic uploads, disk/tape states, staging.

Data of a file lives in ``<pool>/data/<pnfsid>``.  An upload writes to
``<pool>/incoming/`` and becomes the file only on commit, when the data is
renamed into place in the same namespace transaction that makes the entry
visible; an aborted or interrupted upload leaves the old version untouched.

With tertiary storage (see hsm.py) a file can be flushed to tape, dropped
from disk (tape only) and staged back; concurrent stage requests of one
file share a single recall.

Space (see space.py and sweeper.py): the pool knows when each disk copy
was made and last used, which copies are busy (being read, flushed or
staged) and which are pinned.  Access and write times live in the pool
process (seeded from the data file's mtime after a restart), not in the
namespace, so a read costs no database write; pins are small files in
``<pool>/pins/`` so that dcap-admin and a restarted door see them.
"""

import contextlib
import os
import secrets
import shutil
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from distcache.dcap.checksum import BLOCK_SIZE, adler32_of_file
from distcache.dcap.errors import (
    RC_DISK_IO,
    RC_INVALID_ARGS,
    RC_NOT_CACHED,
    RC_NOT_FILE,
    RC_NOT_ONLINE,
    RC_NOT_REGULAR,
    DcapError,
    NoSpace,
    NotCached,
    NotFound,
    StageFailed,
)
from distcache.dcap.space import SpaceSettings
from distcache.dcap.flushpolicy import FlushPolicy
from distcache.dcap.sweeper import Copy, Survey, Sweeper
from distcache.dcap.engines import open_engine
from distcache.dcap.names import ino_of
from distcache.dcap.workers import INLINE, OffThreadNamespace, then

log = Logger()

#: The name of a door's pool (poollist entries of this name apply to it).
DEFAULT_POOL_NAME = "pool1"

def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Upload:
    """A file being written: a temporary data file and the namespace ticket.

    ``file`` is open read/write (the mover may seek); ``commit`` makes it the
    file's new version, ``abort`` discards it.  Exactly one of them takes
    effect; later calls of abort are harmless.
    """

    def __init__(self, pool, ticket, temp_path, file):
        self.pool = pool
        self.ticket = ticket
        self.temp_path = temp_path
        self.file = file
        self.done = False
        self.committing = False
        #: The Entry the commit published (None until then).
        self.entry = None

    @property
    def path(self):
        """The namespace path being written."""
        return self.ticket.path

    @property
    def old(self):
        """The Entry this upload replaces, or None."""
        return self.ticket.old

    def commit(self, size=None, adler32=None, client_adler32=None):
        """Publish the data as the file's new version: the new Entry (or a Deferred).

        size, when given, must match the bytes written (a mismatch is a
        disk I/O error); adler32 is computed here when the mover could not
        follow the writes; client_adler32, when the client sent one, must
        match it.  The fsyncs and the checksum run on the pool's disk
        worker (without either, the seal is done at once) and the namespace
        commit on its database worker, so with thread workers the answer is
        a Deferred.  Until it is in, abort()
        leaves the upload alone: the commit decides.
        """
        if self.done or self.committing:
            raise DcapError(RC_DISK_IO, "Upload already finished", "EIO")
        self.committing = True
        work = self.pool.workers
        try:
            if self.pool.fsync or adler32 is None:
                sealed = work.disk(self._seal, size, adler32, client_adler32)
            else:
                # Nothing to sync and no file to read back: a flush of the last
                # buffered bytes, an fstat and a close, cheaper than a thread hop.
                sealed = self._seal(size, adler32, client_adler32)
            result = then(
                sealed,
                lambda sealed: work.database(
                    self.pool.engine.commit_write, self.ticket, sealed[0], sealed[1],
                    self.pool.name, self._place))
            result = then(result, self._published)
        except BaseException:
            self._failed()
            raise
        if isinstance(result, defer.Deferred):
            def failed(failure):
                self._failed()
                return failure
            result.addErrback(failed)
        return result

    def _seal(self, size, adler32, client_adler32):
        """Disk work before publishing: flush, sync, size and checksum; (size, adler32)."""
        self.file.flush()
        if self.pool.fsync:
            os.fsync(self.file.fileno())
        actual = os.fstat(self.file.fileno()).st_size
        self.file.close()
        if size is not None and size != actual:
            raise DcapError(
                RC_DISK_IO, "Size mismatch: %d written, %d expected" % (actual, size), "EIO")
        if adler32 is None:
            adler32 = adler32_of_file(self.temp_path)
        if client_adler32 is not None and client_adler32 != adler32:
            raise DcapError(RC_DISK_IO, "Checksum mismatch: client 0x%08x, pool 0x%08x"
                            % (client_adler32, adler32), "EIO")
        return actual, adler32

    def _published(self, pair):
        new, old = pair
        self.entry = new
        self.done = True
        self.committing = False

        def finish(_):
            if old is not None:
                self.pool._discard(old)
            log.info("stored {path} as {pnfsid} ({size} bytes)",
                     path=new.path, pnfsid=new.pnfsid, size=new.size)
            return new

        if self.pool.fsync:
            return then(self.pool.workers.disk(_fsync_dir, self.pool.data_dir), finish)
        return finish(None)

    def _failed(self):
        """A commit that did not publish: drop its data, whatever step failed."""
        if self.done:
            return
        self.committing = False
        self.pool.workers.database(self._unplace)
        self.abort()

    def _place(self, pnfsid):
        self.placed = self.pool._data_path(pnfsid)
        os.rename(self.temp_path, self.placed)
        self.pool._made(pnfsid)

    def _unplace(self):
        """After a failed commit, drop data renamed in for an entry that never was."""
        placed = getattr(self, "placed", None)
        if placed is None:
            return
        try:
            self.pool.engine.get(os.path.basename(placed))
        except DcapError:
            try:
                os.unlink(placed)
            except FileNotFoundError:
                pass

    def abort(self):
        """Discard the written data; the namespace is unchanged."""
        if self.done or self.committing:
            return
        self.done = True
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass


class _WallClock:
    """time.time as an IReactorTime's seconds(), for pools without a reactor."""

    @staticmethod
    def seconds():
        return time.time()


class _ReadCopy:
    """A disk copy open for reading: the file, which marks the copy busy until closed."""

    def __init__(self, file, release):
        self._file = file
        self._release = release

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self._file.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class Pool:
    """One pool directory next to a namespace, with optional tertiary storage.

    fsync=True makes every commit durable (data and directory are synced)
    before the file becomes visible; False trades that for speed.

    workers runs the blocking parts (see workers.py): INLINE answers with
    values, ThreadWorkers with Deferreds, and then ``namespace`` is the
    engine seen through the database worker, which the door uses.
    """

    def __init__(self, directory, namespace, name=DEFAULT_POOL_NAME, hsm=None, fsync=True,
                 workers=INLINE, clock=None, space=None):
        self.directory = directory
        self.clock = clock if clock is not None else _WallClock()
        self.space = space if space is not None else SpaceSettings()
        self.workers = workers
        self.engine = namespace
        self.namespace = (namespace if workers is INLINE
                          else OffThreadNamespace(namespace, workers))
        self.name = name
        #: Set by a cluster: called with an entry whose data another node's pool holds
        #: when the file is removed or replaced here, so that pool deletes it.
        self.discard_elsewhere = None
        self.hsm = hsm
        self.fsync = fsync
        self.data_dir = os.path.join(directory, "data")
        self.incoming_dir = os.path.join(directory, "incoming")
        self.pins_dir = os.path.join(directory, "pins")
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.incoming_dir, exist_ok=True)
        os.makedirs(self.pins_dir, exist_ok=True)
        self._stages = {}
        self._flushes = {}
        self._readers = {}  # pnfsid -> open reads of its disk copy
        self._accessed = {}  # pnfsid -> last read or write, on self.clock
        self._written = {}  # pnfsid -> when its disk copy was made, on self.clock
        self.sweeper = Sweeper(self, self.space, self.clock)
        self.flusher = FlushPolicy(self, self.space, self.clock)
        self._sweep_incoming()

    # -- data files -----------------------------------------------------

    def free_space(self):
        """Bytes an unprivileged writer may still add to the pool's filesystem."""
        st = os.statvfs(self.incoming_dir)
        return st.f_bavail * st.f_frsize

    def _data_path(self, pnfsid):
        return os.path.join(self.data_dir, pnfsid)

    def data_path(self, entry):
        """Where the disk copy of entry lives (it may not exist)."""
        return self._data_path(entry.pnfsid)

    def is_cached(self, entry):
        """True when a complete disk copy really exists on this pool."""
        if not entry.is_file:
            return False
        try:
            return os.stat(self.data_path(entry)).st_size == entry.size
        except OSError:
            return False

    def open_read(self, entry):
        """A binary file object on the disk copy (NotCached rc 4 without one)."""
        if not entry.is_file:
            raise DcapError(RC_NOT_FILE, "Not a File")
        try:
            f = open(self.data_path(entry), "rb")
        except FileNotFoundError:
            raise NotCached(RC_NOT_CACHED, "File is not cached") from None
        pnfsid = entry.pnfsid
        self._readers[pnfsid] = self._readers.get(pnfsid, 0) + 1
        self._accessed[pnfsid] = self.clock.seconds()
        return _ReadCopy(f, lambda: self._read_done(pnfsid))

    def _read_done(self, pnfsid):
        left = self._readers.get(pnfsid, 0) - 1
        if left > 0:
            self._readers[pnfsid] = left
        else:
            self._readers.pop(pnfsid, None)
        self._accessed[pnfsid] = self.clock.seconds()

    def _made(self, pnfsid):
        """A disk copy of pnfsid was just written or staged."""
        now = self.clock.seconds()
        self._written[pnfsid] = now
        self._accessed[pnfsid] = now

    def start_management(self):
        """Start the sweeper and the flush policy (on the pool's clock)."""
        self.sweeper.start()
        self.flusher.start()

    def stop_management(self):
        self.flusher.stop()
        self.sweeper.stop()

    @property
    def flushing(self):
        """pnfsids being flushed to tape now."""
        return frozenset(self._flushes)

    def is_busy(self, pnfsid):
        """True while the disk copy is read, flushed or staged (never dropped then)."""
        return bool(self._readers.get(pnfsid)) or pnfsid in self._flushes \
            or pnfsid in self._stages

    def open_write(self, path, subject, mode=0o644, replace=False, copy_existing=False,
                   overwrite_hint=None, alloc_size=None, access_latency=None,
                   retention_policy=None):
        """Start an Upload of path; the namespace checks the subject's rights.

        replace allows a new version of an existing file (the door's
        truncate policy); copy_existing starts from the current data, for
        ``rw`` opens that modify a file in place; overwrite_hint ends the
        refusal of an existing file when replace is false.  On a pool with
        a size, alloc_size bytes (at least one) must fit once everything
        droppable is dropped, else NoSpace (ENOSPC); a write that fits
        only after dropping has the sweeper drop first.  access_latency and
        retention_policy (retention.py) are recorded on the new file.
        """
        if self.space.manages_space:
            need = max(int(alloc_size or 0), 1)
            return then(self.make_room(need), lambda _: self._open_write(
                path, subject, mode, replace, copy_existing, overwrite_hint,
                access_latency, retention_policy))
        return self._open_write(path, subject, mode, replace, copy_existing, overwrite_hint,
                                access_latency, retention_policy)

    def _open_write(self, path, subject, mode, replace, copy_existing, overwrite_hint,
                    access_latency=None, retention_policy=None):
        def start(ticket):
            ticket.access_latency = access_latency
            ticket.retention_policy = retention_policy
            temp = os.path.join(
                self.incoming_dir, "%d-%s" % (os.getpid(), secrets.token_hex(8))
            )
            if copy_existing and ticket.old is not None:
                old = ticket.old.pnfsid
                self._readers[old] = self._readers.get(old, 0) + 1  # busy: not dropped
                try:
                    copied = self.workers.disk(self._copy_of, ticket.old, temp)
                except BaseException:
                    self._read_done(old)
                    raise
                if isinstance(copied, defer.Deferred):
                    copied.addBoth(lambda r: (self._read_done(old), r)[1])
                else:
                    self._read_done(old)
                return then(copied, lambda f: Upload(self, ticket, temp, f))
            return Upload(self, ticket, temp, open(temp, "x+b"))

        return then(self.workers.database(self.engine.prepare_write, path, subject, mode,
                                          replace, overwrite_hint), start)

    def _copy_of(self, old, temp):
        """Disk work of an ``rw`` open: the old version copied to temp, opened r+b."""
        if not self.is_cached(old):
            raise NotCached(RC_NOT_CACHED, "File is not cached")
        with open(self.data_path(old), "rb") as src, open(temp, "xb") as dst:
            shutil.copyfileobj(src, dst, BLOCK_SIZE)
        return open(temp, "r+b")

    def unlink(self, path, subject):
        """Remove a file from the namespace and its data from disk and tape."""
        def discard(entry):
            self._discard(entry)
            return entry
        return then(self.workers.database(self.engine.unlink, path, subject), discard)

    def _discard(self, entry):
        self._accessed.pop(entry.pnfsid, None)
        self._written.pop(entry.pnfsid, None)
        if entry.pool and entry.pool != self.name and self.discard_elsewhere is not None:
            self.discard_elsewhere(entry)  # another node's pool holds the data
        else:
            try:
                os.unlink(self.data_path(entry))
            except FileNotFoundError:
                pass
        if entry.tape_uri and self.hsm is not None:
            d = self.hsm.remove(entry.tape_uri)
            d.addErrback(
                lambda f: log.failure("removing {uri} from tape failed", f,
                                      uri=entry.tape_uri)
            )

    def _sweep_incoming(self):
        """Drop uploads left behind by processes that no longer exist."""
        for name in os.listdir(self.incoming_dir):
            pid = name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                try:
                    os.unlink(os.path.join(self.incoming_dir, name))
                    log.info("dropped stale upload {name}", name=name)
                except OSError:
                    pass

    def _remove_unowned(self, name):
        """Remove name's data if it is a pool file no namespace entry owns: its size, else None."""
        try:
            ino_of(name)
        except DcapError:
            return None  # not a pool file name
        try:
            self.engine.get(name)
            return None
        except NotFound:
            pass  # only a definite "no such entry" makes data an orphan
        path = self._data_path(name)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return None
        return size

    def discard_orphan(self, pnfsid):
        """Delete pnfsid's data if no namespace entry owns it any more; True if it did.

        Another node's door removed (or replaced) the file and asked this pool, which
        holds the data, to delete it.  Runs on the database worker: the namespace is
        asked first, so data that still has an owner is never touched.
        """
        size = self._remove_unowned(pnfsid)
        if size is None:
            return False
        log.info("removed the data of {pnfsid} ({size} bytes): its file was removed through "
                 "another node's door", pnfsid=pnfsid, size=size)
        return True

    def sweep_orphans(self):
        """Remove data files that no namespace entry owns; the names removed.

        A crash between placing an upload's data and committing its entry
        leaves such a file.  The check runs inside the engine's exclusive
        transaction where it has one, so a commit in another process (which
        places its data inside its own transaction) is never mistaken for one.
        Files whose names are not pnfs ids are not the pool's and stay.
        """
        exclusive = getattr(self.engine, "exclusive", None)
        removed = []
        with (exclusive() if exclusive is not None else contextlib.nullcontext()):
            for name in sorted(os.listdir(self.data_dir)):
                size = self._remove_unowned(name)
                if size is None:
                    continue
                removed.append(name)
                log.info("pool sweep: removed {name} ({size} bytes), data that no namespace "
                         "entry owns", name=name, size=size)
        log.info("pool sweep: {n} orphaned data file(s) removed", n=len(removed))
        return removed

    # -- tertiary storage -----------------------------------------------

    def is_staging(self, entry):
        """True while this process, or another live one, recalls entry from tape."""
        if entry.pnfsid in self._stages:
            return True
        return entry.staging is not None and _pid_alive(entry.staging)

    def stage(self, entry):
        """A Deferred firing with the fresh Entry once a disk copy exists.

        Fires at once for a cached file; concurrent calls for one file share
        one recall; failures are StageFailed with a clear message.
        """
        if not entry.is_file:
            return defer.fail(
                DcapError(RC_NOT_REGULAR, "path is not a regular file", "EINVAL")
            )
        if self.is_cached(entry):
            return defer.succeed(entry)
        return self._join(self._stages, entry, self._recall)

    def flush(self, entry):
        """Copy a file's disk copy to tape; a Deferred firing with the Entry.

        Concurrent flushes of one file share one copy; a flushed file
        answers at once.
        """
        if not entry.is_file:
            return defer.fail(
                DcapError(RC_NOT_REGULAR, "path is not a regular file", "EINVAL")
            )
        if self.hsm is None:
            return defer.fail(DcapError(
                RC_NOT_ONLINE, "No tertiary storage configured for this pool", "EIO"))
        def start(fresh):
            if fresh.tape_uri:
                return fresh
            if not fresh.flushable:
                raise DcapError(RC_INVALID_ARGS, "File is ONLINE and REPLICA (disk only): "
                                "it is never flushed to tape", "EPERM")
            if not self.is_cached(fresh):
                raise NotCached(RC_NOT_CACHED, "File is not cached")
            return self._join(self._flushes, fresh, self._store)

        return defer.maybeDeferred(
            lambda: then(self.workers.database(self.engine.get, entry.pnfsid), start))

    def flush_pnfsid(self, pnfsid):
        """flush() of the file with this pnfsid (the flush policy's entry point)."""
        return defer.maybeDeferred(
            lambda: then(self.workers.database(self.engine.get, pnfsid), self.flush))

    @staticmethod
    def _join(running, entry, start):
        """A Deferred on the shared operation for entry, starting it if needed."""
        pnfsid = entry.pnfsid
        d = defer.Deferred()
        waiters = running.get(pnfsid)
        if waiters is not None:
            waiters.append(d)
            return d
        running[pnfsid] = [d]

        def deliver(result):
            for waiter in running.pop(pnfsid, []):
                if waiter.called:
                    continue  # that caller cancelled (e.g. its open timed out)
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        defer.maybeDeferred(start, entry).addBoth(deliver)
        return d

    def _recall(self, entry):
        return then(self.workers.database(self.engine.get, entry.pnfsid), self._recall_fresh)

    def _recall_fresh(self, fresh):
        pnfsid = fresh.pnfsid
        if self.is_cached(fresh):
            return fresh
        if not fresh.tape_uri:
            raise StageFailed(
                RC_NOT_ONLINE, "File is lost: no disk copy and no tape copy", "EIO")
        if self.hsm is None:
            raise StageFailed(
                RC_NOT_ONLINE, "No tertiary storage configured for this pool", "EIO")
        temp = os.path.join(
            self.incoming_dir, "%d-stage-%s" % (os.getpid(), secrets.token_hex(8))
        )
        log.info("staging {path} ({pnfsid}) from {uri}", path=fresh.path,
                 pnfsid=pnfsid, uri=fresh.tape_uri)

        def settle():
            """Disk work once tape is done: check, sync and place the copy."""
            try:
                size = os.stat(temp).st_size
            except FileNotFoundError:
                raise StageFailed(
                    RC_DISK_IO, "Tertiary storage reported success but wrote no file",
                    "EIO") from None
            if size != fresh.size:
                raise StageFailed(
                    RC_DISK_IO,
                    "Staged copy has %d bytes, expected %d" % (size, fresh.size), "EIO")
            if self.fsync:
                with open(temp, "rb") as f:
                    os.fsync(f.fileno())
            os.rename(temp, self.data_path(fresh))
            self._made(pnfsid)

        def record(_):
            d = defer.maybeDeferred(self.workers.database, self.engine.set_location,
                                    pnfsid, on_disk=True, pool=self.name)

            def removed(failure):
                failure.trap(DcapError)
                os.unlink(self.data_path(fresh))  # removed while it was being staged
                return failure

            def done(staged_entry):
                log.info("staged {path} ({pnfsid})", path=staged_entry.path, pnfsid=pnfsid)
                return staged_entry

            return d.addCallbacks(done, removed)

        def staged(_):
            return then(self.workers.disk(settle), record)

        def failed(failure):
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            err = failure.value
            if not isinstance(err, DcapError):
                err = StageFailed(RC_NOT_ONLINE, "Stage failed: %s" % (err,), "EIO")
            log.warn("stage of {pnfsid} failed: {error}", pnfsid=pnfsid, error=err)
            raise err

        def unmark(result):
            d = defer.maybeDeferred(self.workers.database, self.engine.set_staging, pnfsid, None)
            d.addErrback(lambda f: f.trap(DcapError))  # the file was removed meanwhile
            return d.addCallback(lambda _: result)

        def recall(_):
            d = defer.maybeDeferred(self.hsm.stage, fresh, fresh.tape_uri, temp)
            d.addCallback(staged)
            d.addErrback(failed)
            d.addBoth(unmark)
            return d

        return then(self.workers.database(self.engine.set_staging, pnfsid, os.getpid()), recall)

    def _store(self, entry):
        pnfsid = entry.pnfsid

        def stored(uri):
            def recorded(fresh):
                log.info("flushed {path} ({pnfsid}) to {uri}", path=fresh.path,
                         pnfsid=pnfsid, uri=uri)
                return fresh
            return then(self.workers.database(self.engine.set_location, pnfsid, tape_uri=uri),
                        recorded)

        def failed(failure):
            err = failure.value
            if not isinstance(err, DcapError):
                err = DcapError(RC_NOT_ONLINE, "Flush failed: %s" % (err,), "EIO")
            log.warn("flush of {pnfsid} failed: {error}", pnfsid=pnfsid, error=err)
            raise err

        d = defer.maybeDeferred(self.hsm.flush, entry, self.data_path(entry))
        d.addCallbacks(stored, failed)
        return d

    def drop(self, entry):
        """Remove the disk copy of a flushed file, leaving it on tape only."""
        if not entry.is_file:
            raise DcapError(RC_NOT_REGULAR, "path is not a regular file", "EINVAL")
        return self._drop(entry.pnfsid)

    def _drop(self, pnfsid, unless_busy=False):
        def unlink_copy(fresh):
            if not fresh.tape_uri:
                raise DcapError(
                    RC_NOT_ONLINE, "File has no tape copy: flush it before dropping", "EIO"
                )
            if unless_busy and self.is_busy(pnfsid):
                return None
            return then(self.workers.disk(_unlink, self.data_path(fresh)),
                        lambda _: then(self.workers.database(
                            self.engine.set_location, pnfsid, on_disk=False), dropped))

        def dropped(fresh):
            self._accessed.pop(pnfsid, None)
            self._written.pop(pnfsid, None)
            log.info("dropped disk copy of {path} ({pnfsid})", path=fresh.path,
                     pnfsid=fresh.pnfsid)
            return fresh

        return then(self.workers.database(self.engine.get, pnfsid), unlink_copy)

    # -- space ------------------------------------------------------------

    def survey(self):
        """Every disk copy with its size, times, tape state, pin and use: a Survey.

        The directory scan and pins run on the disk worker, the tape state
        on the database worker; a Deferred with thread workers.
        """
        def entries(found):
            copies, pins = found
            return then(self.workers.database(self.engine.tape_copies),
                        lambda files: self._survey_of(copies, pins, files))

        return then(self.workers.disk(self._scan), entries)

    def _scan(self):
        """Disk work of a survey: (pnfsid, size, mtime) of each copy, and the pins."""
        copies = []
        with os.scandir(self.data_dir) as it:
            for item in it:
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                copies.append((item.name, st.st_size, st.st_mtime))
        return copies, self._read_pins()

    def _survey_of(self, copies, pins, files):
        result = []
        for pnfsid, size, mtime in copies:
            is_file = pnfsid in files
            result.append(Copy(
                pnfsid=pnfsid, size=size,
                accessed=self._accessed.get(pnfsid, mtime),
                written=self._written.get(pnfsid, mtime),
                on_tape=bool(files.get(pnfsid, (None, True))[0]),
                flushable=files.get(pnfsid, (None, True))[1],
                busy=self.is_busy(pnfsid) or not is_file,
                pinned_until=pins.get(pnfsid),
                is_file=is_file))
        return Survey(now=self.clock.seconds(), pool_size=self.space.pool_size,
                      copies=tuple(result))

    def room_after_drops(self):
        """Bytes a new file may use once every droppable copy is dropped.

        None without a pool size.  This is the one answer to "would a write
        of N bytes fit?": a copy on tape that is not busy and not pinned
        counts as free space.
        """
        return then(self.survey(), lambda survey: survey.room_after_drops)

    def make_room(self, need):
        """Make sure need bytes fit: sweep if dropping makes them fit, else NoSpace."""
        def judge(survey):
            room = survey.room_after_drops
            if room is None:
                return None
            if room < need:
                raise NoSpace(RC_DISK_IO, "No space left on pool %s: %d bytes wanted, %d "
                              "free after dropping every copy that is on tape"
                              % (self.name, need, max(room, 0)), "ENOSPC")
            if survey.free < need:
                return self.sweeper.sweep(need)
            return None
        return then(self.survey(), judge)

    def drop_copies(self, copies):
        """Drop the disk copies of copies (sweeper victims), one after another.

        A copy that became busy since the survey is left; failures are
        logged and the rest go on.  A Deferred firing with the dropped Entries.
        """
        dropped = []

        def one(_, copy):
            d = defer.maybeDeferred(self._drop, copy.pnfsid, True)

            def done(entry):
                if entry is not None:
                    dropped.append(entry)

            def failed(failure):
                log.warn("dropping {pnfsid} failed: {error}", pnfsid=copy.pnfsid,
                         error=failure.getErrorMessage())
            return d.addCallbacks(done, failed)

        chain = defer.succeed(None)
        for copy in copies:
            chain.addCallback(one, copy)
        return chain.addCallback(lambda _: dropped)

    # -- pins -------------------------------------------------------------

    def pin(self, entry, seconds):
        """Keep entry's disk copy for seconds from now (a later pin wins)."""
        until = self.clock.seconds() + seconds

        def write():
            current = self._read_pins().get(entry.pnfsid)
            if current is not None and current >= until:
                return current
            path = os.path.join(self.pins_dir, entry.pnfsid)
            temp = path + ".tmp"
            with open(temp, "w") as f:
                f.write("%r\n" % until)
            os.rename(temp, path)
            return until

        def pinned(until):
            log.info("pinned {path} ({pnfsid}) for {seconds}s", path=entry.path,
                     pnfsid=entry.pnfsid, seconds=seconds)
            return until

        return then(self.workers.disk(write), pinned)

    def pins(self):
        """{pnfsid: pinned until (on the pool's clock)} of every pin, expired ones too."""
        return self.workers.disk(self._read_pins)

    def _read_pins(self):
        pins = {}
        for name in os.listdir(self.pins_dir):
            if name.endswith(".tmp"):
                continue
            try:
                with open(os.path.join(self.pins_dir, name)) as f:
                    pins[name] = float(f.read().strip())
            except (OSError, ValueError):
                continue
        return pins

    def expire_pins(self, survey):
        """Remove the pins of survey that have run out (disk worker)."""
        gone = [pnfsid for pnfsid, until in self._pins_of(survey) if until <= survey.now]
        if not gone:
            return None

        def remove():
            for pnfsid in gone:
                _unlink(os.path.join(self.pins_dir, pnfsid))
        for pnfsid in gone:
            log.info("pin of {pnfsid} expired", pnfsid=pnfsid)
        return self.workers.disk(remove)

    @staticmethod
    def _pins_of(survey):
        return [(c.pnfsid, c.pinned_until) for c in survey.copies if c.pinned_until is not None]


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_pool(root, hsm=None, name=DEFAULT_POOL_NAME, fsync=True, workers=INLINE, clock=None,
              space=None, namespace=None):
    """The pool of the state directory root and its namespace, as a Pool.

    namespace None is the SQLite file in root; a postgresql:// URL the shared one.
    """
    namespace = open_engine(namespace, root)
    return Pool(os.path.join(root, "pool"), namespace, name=name, hsm=hsm, fsync=fsync,
                workers=workers, clock=clock, space=space)


__all__ = ["Pool", "Upload", "open_pool"]
