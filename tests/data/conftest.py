"""A tiny synthetic COCO set shared by the data tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.synthetic import generate

TRAIN, VAL, SIZE = 16, 13, 64  # 13 val images include one with no objects (index 12)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("coco"), train=TRAIN, val=VAL, seed=7, size=SIZE)


@pytest.fixture(scope="session")
def fake_r50(tmp_path_factory) -> Path:
    """A Python-2-style Caffe2 pickle with every blob of the MSRA R-50.pkl, shaped as there (float16
    zeros: half the size; only names and shapes are checked)."""
    import numpy as np

    from tests.model.test_weights import caffe2_blobs, write_python2_pickle

    blobs = caffe2_blobs(50, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("weights") / "R-50.pkl"
    write_python2_pickle(
        {"blobs": {k: np.zeros(v.shape, np.float16) for k, v in blobs.items()}}, path
    )
    return path
