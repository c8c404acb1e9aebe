"""distcache: a distributed TLS session cache, and a dCache DCAP door and mover, on Twisted."""

__version__ = "0.1.0"
