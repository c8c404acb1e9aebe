"""Whole-file work in blocks: the block size and the adler32 of a file.

dCache records an adler32 per file and dccp may send one at close; the
pool computes it when the mover could not follow the writes front to back,
``dcap-admin`` when it imports a file.  All whole-file reads and the
mover's DATA blocks use ``BLOCK_SIZE``: large enough that a 1 GiB file is
a thousand reads, small enough to keep memory flat.
"""

import zlib

#: Bytes per read of whole-file work and per DATA block sent to a client.
BLOCK_SIZE = 1 << 20

#: adler32 of no bytes, where a running checksum starts.
ADLER32_START = 1


def adler32_of(f, value=ADLER32_START, block=BLOCK_SIZE):
    """The adler32 of everything f (a binary file object) reads from its position on.

    value continues a running checksum; the caller positions f.
    """
    while True:
        chunk = f.read(block)
        if not chunk:
            return value
        value = zlib.adler32(chunk, value)


def adler32_of_file(path, block=BLOCK_SIZE):
    """The adler32 of the file at path."""
    with open(path, "rb") as f:
        return adler32_of(f, block=block)
