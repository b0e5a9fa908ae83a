"""Benchmarks of the pipeline against the stack it replaces: ``python -m loadtest`` (``make bench``)."""
