"""The door's settings: plain data shared by the door and its twistd plugin.

It sits below both so that the plugin module and the protocol module each
import it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from distcache.dcap.namespace import Access

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
