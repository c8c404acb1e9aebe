"""Whole-file work in blocks: the block size and the adler32 of a file.

dCache records an adler32 per file and dccp may send one at close; the
pool computes it when the mover could not follow the writes front to back,
``dcap-admin`` when it imports a file.  All whole-file reads and the
mover's DATA blocks use ``BLOCK_SIZE``: large enough that a 1 GiB file is
a thousand reads, small enough to keep memory flat.

The sums come from ISA-L (the ``isal`` package) when it is installed: on
a write the door sums every byte it receives, and zlib's adler32 alone
costs about as much CPU as the copy into the file.
"""

import zlib

try:  # ISA-L's adler32 (SIMD) gives the same values several times faster
    from isal.isal_zlib import adler32 as _adler32
except ImportError:  # e.g. on PyPy, for which isal ships no wheel
    _adler32 = zlib.adler32

#: Which implementation sums: "isal" or "zlib" (reported by the door at start).
ADLER32_IMPLEMENTATION = "zlib" if _adler32 is zlib.adler32 else "isal"

#: Bytes per read of whole-file work and per DATA block sent to a client.
BLOCK_SIZE = 1 << 20

#: adler32 of no bytes, where a running checksum starts.
ADLER32_START = 1

_ADLER_BASE = 65521


def adler32_concat(first: int, second: int, second_length: int) -> int:
    """The adler32 of X+Y from adler32(X), adler32(Y) and len(Y).

    adler32 is (B << 16) | A with A = 1 + the byte sum and B the sum of
    the running A's, both modulo 65521.  Summing Y after X instead of after
    nothing adds A(X) - 1 to each of Y's running A's: A = A(X) + A(Y) - 1,
    B = B(X) + B(Y) + len(Y) * (A(X) - 1).  So pieces of a stream can be
    summed apart (on other threads) and joined in order.
    """
    a1, b1 = first & 0xFFFF, first >> 16
    a2, b2 = second & 0xFFFF, second >> 16
    a = (a1 + a2 - 1) % _ADLER_BASE
    b = (b1 + b2 + (second_length % _ADLER_BASE) * (a1 - 1)) % _ADLER_BASE
    return (b << 16) | a


def adler32_of_pieces(pieces, value=ADLER32_START) -> int:
    """The adler32 of byte pieces (bytes or memoryviews), one after the other."""
    for piece in pieces:
        value = _adler32(piece, value)
    return value


def adler32_of(f, value=ADLER32_START, block=BLOCK_SIZE):
    """The adler32 of everything f (a binary file object) reads from its position on.

    value continues a running checksum; the caller positions f.
    """
    while True:
        chunk = f.read(block)
        if not chunk:
            return value
        value = _adler32(chunk, value)


def adler32_of_file(path, block=BLOCK_SIZE):
    """The adler32 of the file at path."""
    with open(path, "rb") as f:
        return adler32_of(f, block=block)
