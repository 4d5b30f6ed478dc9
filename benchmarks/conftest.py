"""Benchmarks run only under ``pytest --benchmark-only``; a plain ``pytest`` (the test suite) skips them, so
timings never hide inside the tests and the tests never wait on timings."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only", default=False):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `pytest --benchmark-only`")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
