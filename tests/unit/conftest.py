"""Fixtures for the unit tests: the fuzz targets' example counts, printed once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_examples(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a module that counts its examples in ``RUNS`` (the fuzz tests), print the counts."""
    yield
    runs = getattr(request.module, "RUNS", None)
    if runs is None:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[fuzz] {Path(str(request.module.__file__)).name} examples run: {dict(runs)}")
