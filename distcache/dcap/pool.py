"""The pool: file data by pnfs id, atomic uploads, disk/tape states, staging.

Data of a file lives in ``<pool>/data/<pnfsid>``.  An upload writes to
``<pool>/incoming/`` and becomes the file only on commit, when the data is
renamed into place in the same namespace transaction that makes the entry
visible; an aborted or interrupted upload leaves the old version untouched.

With tertiary storage (see hsm.py) a file can be flushed to tape, dropped
from disk (tape only) and staged back; concurrent stage requests of one
file share a single recall.
"""

import os
import secrets
import shutil

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from distcache.dcap.checksum import BLOCK_SIZE, adler32_of_file
from distcache.dcap.errors import (
    RC_DISK_IO,
    RC_NOT_CACHED,
    RC_NOT_FILE,
    RC_NOT_ONLINE,
    RC_NOT_REGULAR,
    DcapError,
    NotCached,
    StageFailed,
)
from distcache.dcap.sqlite_namespace import open_namespace

log = Logger()

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

    @property
    def path(self):
        """The namespace path being written."""
        return self.ticket.path

    @property
    def old(self):
        """The Entry this upload replaces, or None."""
        return self.ticket.old

    def commit(self, size=None, adler32=None):
        """Publish the data as the file's new version; returns the new Entry.

        size, when given, must match the bytes written (a mismatch is a
        disk I/O error); adler32 is computed here when the mover did not.
        """
        if self.done:
            raise DcapError(RC_DISK_IO, "Upload already finished", "EIO")
        try:
            self.file.flush()
            if self.pool.fsync:
                os.fsync(self.file.fileno())
            actual = os.fstat(self.file.fileno()).st_size
            self.file.close()
            if size is not None and size != actual:
                raise DcapError(
                    RC_DISK_IO, "Size mismatch: %d written, %d expected" % (actual, size),
                    "EIO",
                )
            if adler32 is None:
                adler32 = adler32_of_file(self.temp_path)
            new, old = self.pool.namespace.commit_write(
                self.ticket, actual, adler32, self.pool.name, self._place
            )
        except BaseException:
            self._unplace()
            self.abort()
            raise
        self.done = True
        if self.pool.fsync:
            _fsync_dir(self.pool.data_dir)
        if old is not None:
            self.pool._discard(old)
        log.info("stored {path} as {pnfsid} ({size} bytes)",
                 path=new.path, pnfsid=new.pnfsid, size=new.size)
        return new

    def _place(self, pnfsid):
        self.placed = self.pool._data_path(pnfsid)
        os.rename(self.temp_path, self.placed)

    def _unplace(self):
        """After a failed commit, drop data renamed in for an entry that never was."""
        placed = getattr(self, "placed", None)
        if placed is None:
            return
        try:
            self.pool.namespace.get(os.path.basename(placed))
        except DcapError:
            try:
                os.unlink(placed)
            except FileNotFoundError:
                pass

    def abort(self):
        """Discard the written data; the namespace is unchanged."""
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        finally:
            try:
                os.unlink(self.temp_path)
            except FileNotFoundError:
                pass


class Pool:
    """One pool directory next to a namespace, with optional tertiary storage.

    fsync=True makes every commit durable (data and directory are synced)
    before the file becomes visible; False trades that for speed.
    """

    def __init__(self, directory, namespace, name="pool1", hsm=None, fsync=True):
        self.directory = directory
        self.namespace = namespace
        self.name = name
        self.hsm = hsm
        self.fsync = fsync
        self.data_dir = os.path.join(directory, "data")
        self.incoming_dir = os.path.join(directory, "incoming")
        os.makedirs(self.data_dir, exist_ok=True)
        os.makedirs(self.incoming_dir, exist_ok=True)
        self._stages = {}
        self._flushes = {}
        self._sweep_incoming()

    # -- data files -----------------------------------------------------

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
            return open(self.data_path(entry), "rb")
        except FileNotFoundError:
            raise NotCached(RC_NOT_CACHED, "File is not cached") from None

    def open_write(self, path, subject, mode=0o644, replace=False, copy_existing=False):
        """Start an Upload of path; the namespace checks the subject's rights.

        replace allows a new version of an existing file (the door's
        truncate policy); copy_existing starts from the current data, for
        ``rw`` opens that modify a file in place.
        """
        ticket = self.namespace.prepare_write(path, subject, mode, replace)
        temp = os.path.join(
            self.incoming_dir, "%d-%s" % (os.getpid(), secrets.token_hex(8))
        )
        if copy_existing and ticket.old is not None:
            if not self.is_cached(ticket.old):
                raise NotCached(RC_NOT_CACHED, "File is not cached")
            with open(self.data_path(ticket.old), "rb") as src, open(temp, "xb") as dst:
                shutil.copyfileobj(src, dst, BLOCK_SIZE)
            f = open(temp, "r+b")
        else:
            f = open(temp, "x+b")
        return Upload(self, ticket, temp, f)

    def unlink(self, path, subject):
        """Remove a file from the namespace and its data from disk and tape."""
        entry = self.namespace.unlink(path, subject)
        self._discard(entry)
        return entry

    def _discard(self, entry):
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
        fresh = self.namespace.get(entry.pnfsid)
        if fresh.tape_uri:
            return defer.succeed(fresh)
        if not self.is_cached(fresh):
            return defer.fail(NotCached(RC_NOT_CACHED, "File is not cached"))
        return self._join(self._flushes, fresh, self._store)

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
        pnfsid = entry.pnfsid
        fresh = self.namespace.get(pnfsid)
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
        self.namespace.set_staging(pnfsid, os.getpid())

        def staged(_):
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
            try:
                staged_entry = self.namespace.set_location(
                    pnfsid, on_disk=True, pool=self.name)
            except DcapError:
                os.unlink(self.data_path(fresh))  # removed while it was being staged
                raise
            log.info("staged {path} ({pnfsid})", path=staged_entry.path, pnfsid=pnfsid)
            return staged_entry

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
            try:
                self.namespace.set_staging(pnfsid, None)
            except DcapError:
                pass  # the file was removed meanwhile
            return result

        d = defer.maybeDeferred(self.hsm.stage, fresh, fresh.tape_uri, temp)
        d.addCallback(staged)
        d.addErrback(failed)
        d.addBoth(unmark)
        return d

    def _store(self, entry):
        pnfsid = entry.pnfsid

        def stored(uri):
            fresh = self.namespace.set_location(pnfsid, tape_uri=uri)
            log.info("flushed {path} ({pnfsid}) to {uri}", path=fresh.path,
                     pnfsid=pnfsid, uri=uri)
            return fresh

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
        fresh = self.namespace.get(entry.pnfsid)
        if not fresh.tape_uri:
            raise DcapError(
                RC_NOT_ONLINE, "File has no tape copy: flush it before dropping", "EIO"
            )
        try:
            os.unlink(self.data_path(fresh))
        except FileNotFoundError:
            pass
        fresh = self.namespace.set_location(fresh.pnfsid, on_disk=False)
        log.info("dropped disk copy of {path} ({pnfsid})", path=fresh.path,
                 pnfsid=fresh.pnfsid)
        return fresh


def open_pool(root, hsm=None, name="pool1", fsync=True):
    """The namespace and pool of the state directory root, as a Pool."""
    namespace = open_namespace(root)
    return Pool(os.path.join(root, "pool"), namespace, name=name, hsm=hsm, fsync=fsync)


__all__ = ["Pool", "Upload", "open_pool"]
