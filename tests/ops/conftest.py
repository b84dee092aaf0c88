"""The op tests run with the value checks on (harness.ops.set_debug): bad values must raise."""

from __future__ import annotations

import pytest

from harness.ops import debug_checks, set_debug


@pytest.fixture(autouse=True)
def _debug_checks():
    before = debug_checks()
    set_debug(True)
    yield
    set_debug(before)
