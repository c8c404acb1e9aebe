"""Names the DCAP door for twistd; the module is imported only when used."""

from twisted.application.service import ServiceMaker

dcapDoor = ServiceMaker(
    "DCAP door",
    "distcache.dcap_tap",
    "A dCache-compatible DCAP door and mover serving a local namespace and pool",
    "dcap-door",
)
