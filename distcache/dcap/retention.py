"""Access latency and retention policy of a file, as a client may ask for them.

dCache's ``open`` takes ``-access-latency=ONLINE|NEARLINE`` and
``-retention-policy=CUSTODIAL|REPLICA|OUTPUT`` for files it creates.  The
names are matched without regard to case; any other value is ignored (the
file gets no recorded value), as dCache's door ignores it.  A file that is
ONLINE and REPLICA is a disk-only file: it is never written to tape.
"""

from typing import Optional

ONLINE = "ONLINE"
NEARLINE = "NEARLINE"
ACCESS_LATENCIES = (ONLINE, NEARLINE)

CUSTODIAL = "CUSTODIAL"
REPLICA = "REPLICA"
OUTPUT = "OUTPUT"
RETENTION_POLICIES = (CUSTODIAL, REPLICA, OUTPUT)


def _one_of(text: Optional[str], names) -> Optional[str]:
    if text is None:
        return None
    upper = text.strip().upper()
    return upper if upper in names else None


def access_latency(text: Optional[str]) -> Optional[str]:
    """ONLINE or NEARLINE for a client's value; None when absent or not one of them."""
    return _one_of(text, ACCESS_LATENCIES)


def retention_policy(text: Optional[str]) -> Optional[str]:
    """CUSTODIAL, REPLICA or OUTPUT for a client's value; None otherwise."""
    return _one_of(text, RETENTION_POLICIES)


def flushable(latency: Optional[str], policy: Optional[str]) -> bool:
    """Whether a file with this latency and policy may go to tape (not ONLINE+REPLICA)."""
    return not (latency == ONLINE and policy == REPLICA)
