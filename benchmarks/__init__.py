"""Benchmarks, runnable as scripts (see README); a package so tests can import their helpers."""
