"""Benchmarks of the service against the machine's own ceilings; run with `make bench`."""
