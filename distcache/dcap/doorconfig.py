"""The door's settings: plain data shared by the door and its twistd plugin.

It sits below both so that the plugin module and the protocol module each
import it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from distcache.dcap.namespace import Access

#: Opens (and opendirs) one control connection may have waiting for their data connection.
DEFAULT_MAX_WAITING_OPENS = 64

#: Control connections the door holds at once (dCache's -maxLogin), and from one address.
DEFAULT_MAX_LOGINS = 1500
DEFAULT_MAX_LOGINS_PER_PEER = 500

#: Seconds a stopping door lets running transfers go on before it cuts them.
DEFAULT_SHUTDOWN_GRACE = 30.0


@dataclass
class DoorConfig:
    """The door's settings: plain data, so a service holding it can be pickled."""

    access: Access = Access.READONLY
    allow_truncate: bool = False
    connect_back: bool = False
    connect_host: Optional[str] = None
    client_version_min: Tuple[int, ...] = ()
    client_version_max: Tuple[int, ...] = ()
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: Networks whose clients' -uid/-gid are believed; everyone else is anonymous.
    trust_client_uid: Tuple[str, ...] = ()
    #: When set, only peers in these networks may connect (dcap.net.allowed-subnets).
    allowed_subnets: Tuple[str, ...] = ()
    #: Opens one control connection may hold before its client connects for data.
    max_waiting_opens: int = DEFAULT_MAX_WAITING_OPENS
    #: Control connections held at once, in total and from one address (0: no limit).
    max_logins: int = DEFAULT_MAX_LOGINS
    max_logins_per_peer: int = DEFAULT_MAX_LOGINS_PER_PEER
    #: Largest file a write may announce (-alloc-size), in bytes; None: no limit.
    max_file_size: Optional[int] = None
    passwd: Optional[str] = None  # the accounts file of logins through the ssl tunnel
    tls_cert: Optional[str] = None  # TLS on every control connection (the ssl tunnel)
    tls_key: Optional[str] = None


def parse_version_range(text: str) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """`min[:max]` with dotted versions (e.g. `2.47:2.47.99`) as tuples."""
    low, _, high = text.partition(":")

    def version(part: str) -> Tuple[int, ...]:
        part = part.strip()
        if not part:
            return ()
        return tuple(int(x) for x in part.split("."))

    return version(low), version(high)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count, with an optional binary suffix K, M, G or T (``10G``)."""
    text = text.strip().upper()
    if text.endswith("B"):
        text = text[:-1]
    unit = text[-1:] if text[-1:] in _UNITS and text[-1:] else ""
    number = text[:-1] if unit else text
    if not number.isdigit() or not number.isascii():
        raise ValueError("%r is not a size such as 1048576, 512M or 10G" % (text,))
    return int(number) * _UNITS[unit]
