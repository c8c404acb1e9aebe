"""Hypothesis runs without an example database so test runs leave no files behind."""

from hypothesis import settings

settings.register_profile("dcap", database=None)
settings.load_profile("dcap")
