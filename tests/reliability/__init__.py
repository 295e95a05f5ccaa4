"""Reliability and security tests: kill -9, concurrency, full disks, flaky servers, hostile input.

Each module turns one promise of the store (docs/reliability.md) into tests that fail when the
promise breaks. They run in CI with the rest of the suite; keep the directory under ~3 minutes.
"""
