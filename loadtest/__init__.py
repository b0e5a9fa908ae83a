"""Benchmarks against the seed's stack: ``python -m loadtest`` (``make bench``)."""
