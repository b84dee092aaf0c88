"""A tiny synthetic COCO set shared by the data tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.synthetic import generate

TRAIN, VAL, SIZE = 16, 13, 64  # 13 val images include one with no objects (index 12)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("coco"), train=TRAIN, val=VAL, seed=7, size=SIZE)
