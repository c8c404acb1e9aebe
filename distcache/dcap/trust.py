"""Whom the door believes: network lists and the subject of a request.

Plain DCAP carries no credentials: a client's ``-uid``/``-gid`` are claims.
The door treats every client as the anonymous user (its permissions are
the "other" bits) unless the client's address is in a network the door's
``--trust-client-uid`` lists, where claims are believed as NFS servers
believe AUTH_SYS.  `subject_for` is the one place that decision is made,
so an authenticated identity (a verified uid/gid) fits beside it.
"""

from __future__ import annotations

import ipaddress
from typing import Optional, Sequence, Tuple

from distcache.dcap.namespace import Access, Subject, anonymous_subject


class NetworkListError(ValueError):
    """A CIDR list that does not parse."""


def parse_networks(text: str) -> Tuple[str, ...]:
    """`CIDR[,CIDR...]` as normalised network strings (plain data, pickles).

    A bare address is a one-host network.  Host bits set in a network
    (``127.0.0.1/8``) are allowed and cleared, as operators write them.
    """
    networks = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise NetworkListError("%r is not an address or CIDR network" % (part,)) from None
    if not networks:
        raise NetworkListError("no network given")
    return tuple(networks)


def in_networks(host: Optional[str], networks: Sequence[str]) -> bool:
    """True when host (an IP address string) lies in one of networks.

    An IPv4-mapped IPv6 peer (``::ffff:127.0.0.1``) counts as its IPv4
    address; a host that is not an IP address (a unix socket) is in none.
    """
    if not host or not networks:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    candidates = (address,) if mapped is None else (address, mapped)
    for text in networks:
        network = ipaddress.ip_network(text)
        if any(a.version == network.version and a in network for a in candidates):
            return True
    return False


def subject_for(access: Access, trusted: bool, uid: int, gid: int,
                verified: Optional[Subject] = None) -> Subject:
    """The subject a request acts as.

    verified is the identity the control connection proved (a login
    through the ssl tunnel), which wins whatever the client claims;
    without one, the claimed uid/gid count only when the peer is trusted,
    and otherwise the client is the anonymous user.
    """
    if verified is not None:
        return verified
    if trusted:
        return Subject(uid, gid, access)
    return anonymous_subject(access)
