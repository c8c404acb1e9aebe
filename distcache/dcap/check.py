"""
Answering ``check`` (dccp -P -t -1): is there a disk copy of this file?

A door started with ``-check=strict`` looks: a pool of this door that is up
must really hold a complete disk copy.  Otherwise the door answers from the
namespace's record, which is only a guess (the copy may be gone, or its pool
down).  With tertiary storage behind the pool, "not cached" means "on tape
only"; without one, "lost or pool down".
"""

import os

# dccp prints this with rc 4 (errors.RC_NOT_CACHED) and exits 255.
NOT_CACHED_MESSAGE = "File is not cached"


def pool_is_up(pool):
    """A pool of this door is up when its data directory can be listed."""
    try:
        return os.path.isdir(pool.data_dir) and os.access(pool.data_dir, os.X_OK)
    except (AttributeError, OSError):
        return False


def has_disk_copy(entry, pools, strict):
    """
    True when ``check`` should answer ok for entry.

    ``pools`` are the pools this door serves.  Strict: one of them that is
    up (and is the entry's recorded pool when one is recorded) holds a
    complete copy.  Fuzzy: the namespace says the file is on disk.
    """
    if not entry.is_file:
        return False
    if not strict:
        return bool(entry.on_disk)
    for pool in pools:
        if entry.pool is not None and getattr(pool, "name", None) != entry.pool:
            continue
        if pool_is_up(pool) and pool.is_cached(entry):
            return True
    return False

