"""Persistence of workflow and task records: one interface, two implementations.

`JsonFileStore` (the daemon's durable queue) and `MemoryStore` (direct mode,
tests) share one test suite (tests/test_store.py).
"""
