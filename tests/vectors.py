"""Loading the captured C distcache bytes (golden test input)."""

import os
from pathlib import Path

# Bytes captured from the C distcache and from dccp, kept beside the tests.
VECTORS = Path(os.environ.get("DISTCACHE_VECTORS", Path(__file__).resolve().parent / "vectors"))


def transcript(name):
    """[(connection, direction, bytes)] from a ``<conn> C>S|S>C <count> <hex>`` log."""
    rows = []
    for line in (VECTORS / name).read_text().splitlines():
        if not line.strip():
            continue
        conn, direction, count, hexbytes = line.split()
        data = bytes.fromhex(hexbytes)
        assert len(data) == int(count), line
        rows.append((conn, direction, data))
    return rows


def hexfile(name):
    return bytes.fromhex((VECTORS / name).read_text().strip())
