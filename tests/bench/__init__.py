"""Benchmarks: `make bench` runs `python -m tests.bench`; not part of `make test`."""
