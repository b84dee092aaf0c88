"""Evaluation post-processing at COCO scale: the path it replaces (paste every mask at the full
image size, copy each image to the host, RLE-encode image by image) beside harness.postprocess, on
identical model-like outputs (tests/test_postprocess.py: coco_like_detections, 100 detections per
image with 28 x 28 mask probabilities, COCO-shaped images).

Run: `.venv/bin/python -m pytest benchmarks/test_eval_bench.py --benchmark-only` (add
`--bench-device cuda` on a GPU). Environment: EVAL_BENCH_IMAGES (default 16; 5000 is a whole
val2017 evaluation), EVAL_BENCH_BATCH (images per submitted batch, default 8), EVAL_BENCH_WORKERS
(the encoder's processes, default postprocess.default_workers()). Each case records its time per
image in extra_info and its results must equal the old path's exactly; RESULTS.md has the
numbers.
"""

import os

import pytest
import torch

from benchmarks.conftest import sync
from harness import postprocess
from harness.model.roi_heads import Detections
from tests.test_postprocess import COCO_CATEGORY_IDS, coco_like_detections, paste_and_encode

IMAGES = int(os.environ.get("EVAL_BENCH_IMAGES", "16"))
BATCH = int(os.environ.get("EVAL_BENCH_BATCH", "8"))
WORKERS = int(os.environ.get("EVAL_BENCH_WORKERS", str(postprocess.default_workers())))


@pytest.fixture(scope="module")
def pairs(bench_device: torch.device):
    to = bench_device
    return [
        (Detections(d.boxes.to(to), d.scores.to(to), d.labels.to(to), d.masks.to(to)), t)
        for d, t in coco_like_detections(IMAGES)
    ]


def _ours(pairs, workers: int) -> list[dict]:
    encoder = postprocess.ResultEncoder(COCO_CATEGORY_IDS, 0.5, workers=workers)
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
        encoder.submit([d for d, _ in chunk], [t for _, t in chunk])
    return encoder.results()


@pytest.fixture(scope="module")
def todays_results() -> list[dict]:
    """The old path's COCO results on the benchmark's images, which ours must equal. Pasted on the
    CPU, as the reference pastes (maskrcnn-benchmark moves the detections to the CPU before its
    Masker); on a GPU the old path's resize rounds as CUDA does, which may flip pixels within
    rounding of the threshold."""
    return paste_and_encode(coco_like_detections(IMAGES), COCO_CATEGORY_IDS)


CASES = {
    "today": lambda pairs: paste_and_encode(pairs, COCO_CATEGORY_IDS),
    "ours-inline": lambda pairs: _ours(pairs, workers=0),
    "ours-workers": lambda pairs: _ours(pairs, workers=WORKERS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_eval_postprocess(benchmark, pairs, todays_results, bench_device, case):
    benchmark.group = f"eval postprocess {IMAGES} images ({bench_device.type})"
    if case == "ours-workers":
        postprocess.start_workers(WORKERS)  # once per training process, during init

    def run():
        results = CASES[case](pairs)
        sync(bench_device)
        return results

    results = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    assert len(results) == sum(len(d.scores) for d, _ in pairs)
    if case != "today":
        assert results == todays_results  # every dict exactly: ids, boxes, scores, RLE strings
    benchmark.extra_info["images"] = IMAGES
    benchmark.extra_info["workers"] = WORKERS if case == "ours-workers" else 0
    if benchmark.disabled:  # the test command's untimed run: no statistics to record
        return
    benchmark.extra_info["ms_per_image"] = benchmark.stats.stats.median / IMAGES * 1e3
