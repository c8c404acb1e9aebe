"""The ``mtls:`` server endpoint string (TLS that requires a client certificate)."""

from distcache.mtls import MutualTLSServerParser

mtls = MutualTLSServerParser()
