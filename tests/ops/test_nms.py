"""nms / batched_nms: identical to torchvision (kept set and order), the reference, and CUDA vs CPU."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import event, given, settings
from hypothesis import strategies as st

from harness import extension
from harness.ops import (
    batched_nms,
    batched_nms_mask,
    batched_nms_reference,
    library,
    nms,
    nms_mask,
    nms_reference,
    set_debug,
)
from tests.conftest import devices
from tests.ops.test_library import opcheck


def rpn_like(n: int, seed: int, dtype=torch.float32, ties: bool = False):
    """Boxes clustered around n // 16 objects (NMS at 0.7 removes about half), random scores."""
    g = torch.Generator().manual_seed(seed)
    k = max(n // 16, 1)
    obj_ctr = torch.rand(k, 2, generator=g) * torch.tensor([1344.0, 800.0])
    obj_wh = torch.exp(torch.rand(k, 2, generator=g) * 4 + 2.5)
    pick = torch.randint(0, k, (n,), generator=g)
    wh = obj_wh[pick] * torch.exp(torch.randn(n, 2, generator=g) * 0.15)
    ctr = obj_ctr[pick] + torch.randn(n, 2, generator=g) * 0.1 * wh
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1).to(dtype)
    scores = torch.rand(n, generator=g, dtype=dtype)
    if ties:
        scores = (scores * 4).round() / 4
    return boxes, scores


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """Same values, every other element of a buffer twice the size."""
    out = torch.empty((*t.shape, 2), dtype=t.dtype, device=t.device)[..., 0]
    out.copy_(t)
    assert not out.is_contiguous() or t.numel() <= 1
    return out


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_nms_matches_torchvision(device, dtype, contiguous):
    for seed in range(24):
        n = [0, 1, 2, 7, 64, 65, 200, 500][seed % 8]
        boxes, scores = rpn_like(n, seed, dtype, ties=seed % 3 == 0)
        threshold = [0.0, 0.3, 0.5, 0.7, 0.9, 1.0][seed % 6]
        boxes, scores = boxes.to(device), scores.to(device)
        if not contiguous:
            boxes, scores = non_contiguous(boxes), non_contiguous(scores)
        # On each device against torchvision's kernel for it: tied scores follow that device's sort.
        expected = torchvision.ops.nms(boxes, scores, threshold)
        assert torch.equal(nms(boxes, scores, threshold), expected), (seed, n, threshold)


@pytest.mark.parametrize("n,groups", [(300, 4), (1500, 10)])
def test_batched_nms_matches_torchvision(n, groups):
    # 300 boxes take torchvision's offset-trick path, 1500 its per-group path (> 4000 coordinates);
    # quantized scores make many ties, whose order differs between the two paths.
    for seed in range(6):
        boxes, scores = rpn_like(n, seed, ties=True)
        idxs = torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(seed))
        for threshold in (0.5, 0.7):
            expected = torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
            assert torch.equal(batched_nms(boxes, scores, idxs, threshold), expected)


def test_nms_matches_reference():
    for seed in range(10):
        boxes, scores = rpn_like(150, seed, ties=seed % 2 == 0)
        assert torch.equal(nms(boxes, scores, 0.6), nms_reference(boxes, scores, 0.6))
        idxs = torch.randint(0, 3, (150,))
        assert torch.equal(
            batched_nms(boxes, scores, idxs, 0.6), batched_nms_reference(boxes, scores, idxs, 0.6)
        )


def test_golden_tiny():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    # IoU(0, 1) = 81 / (100 + 100 - 81) = 0.68: box 0 goes at 0.5, stays at 0.7.
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 0, 2]


def test_threshold_compared_in_float64():
    # IoU = 1/3 in float32 is 0.33333334 > 1/3 in float64: suppressed, as torchvision does; a
    # float32 comparison with the rounded threshold would keep it.
    boxes = torch.tensor([[0, 0, 2, 1], [1, 0, 3, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 1 / 3).tolist() == [0]
    assert torchvision.ops.nms(boxes, scores, 1 / 3).tolist() == [0]
    # IoU exactly 0.5 is not above 0.5.
    half = torch.tensor([[0, 0, 2, 1], [0, 0, 1, 1.0]])
    assert nms(half, scores, 0.5).tolist() == [0, 1]


def test_ties_keep_lower_index_first():
    boxes = torch.tensor([[0, 0, 10, 10.0]]).repeat(5, 1)
    scores = torch.full((5,), 0.5)
    assert nms(boxes, scores, 0.5).tolist() == [0]
    far = boxes + torch.arange(5.0)[:, None] * 100
    assert nms(far, scores, 0.5).tolist() == [0, 1, 2, 3, 4]


def test_groups_never_suppress_each_other():
    boxes = torch.tensor([[0, 0, 10, 10.0]]).repeat(4, 1)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([7, -3, 7, 1000000], dtype=torch.int32)
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [1, 2, 3]


def test_empty_single_and_zero_area():
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert batched_nms(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5
    ).shape == (0,)
    assert nms(torch.tensor([[1, 2, 3, 4.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    # Zero-area boxes have IoU 0 / 0 = NaN with each other, which suppresses nothing.
    points = torch.tensor([[5, 5, 5, 5.0], [5, 5, 5, 5], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(points, scores, 0.1).tolist() == torchvision.ops.nms(points, scores, 0.1).tolist()
    assert nms(points, scores, 0.1).tolist() == [0, 1, 2]


def test_permutation_invariance():
    boxes, scores = rpn_like(300, 3)
    perm = torch.randperm(300)
    kept = nms(boxes, scores, 0.7)
    assert torch.equal(perm[nms(boxes[perm], scores[perm], 0.7)], kept)


@pytest.mark.parametrize(
    "boxes,scores,threshold,error,match",
    [
        (torch.zeros(3, 5), torch.zeros(3), 0.5, ValueError, "boxes must have shape"),
        (torch.zeros(3, 4), torch.zeros(4), 0.5, ValueError, "scores must have shape"),
        (
            torch.zeros(3, 4, dtype=torch.int32),
            torch.zeros(3),
            0.5,
            ValueError,
            "boxes must be float",
        ),
        (
            torch.zeros(3, 4),
            torch.zeros(3, dtype=torch.float64),
            0.5,
            ValueError,
            "scores must have the dtype",
        ),
        (torch.full((2, 4), float("nan")), torch.zeros(2), 0.5, ValueError, "boxes contains NaN"),
        (
            torch.zeros(2, 4),
            torch.tensor([0.1, float("nan")]),
            0.5,
            ValueError,
            "scores contains NaN",
        ),
        (torch.zeros(2, 4), torch.zeros(2), float("nan"), ValueError, "iou_threshold"),
        (torch.zeros(2, 4), torch.zeros(2), "0.5", TypeError, "iou_threshold"),
        ([[0, 0, 1, 1]], torch.zeros(1), 0.5, TypeError, "boxes must be a Tensor"),
    ],
)
def test_bad_arguments(boxes, scores, threshold, error, match):
    with pytest.raises(error, match=match):
        nms(boxes, scores, threshold)


def test_bad_idxs():
    boxes, scores = torch.zeros(3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match="idxs must have an integer dtype"):
        batched_nms(boxes, scores, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="idxs must have shape"):
        batched_nms(boxes, scores, torch.zeros(2, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="idxs must be a Tensor"):
        batched_nms(boxes, scores, [0, 0, 0], 0.5)


_NAN = float("nan")


@st.composite
def _nms_call(draw, min_boxes: int = 0):
    """A valid (boxes, scores, idxs, threshold, legacy): x1 <= x2 and y1 <= y2, finite scores
    (ties among them likely), boxes jittered around one to three centres so that suppression
    happens in most draws, a threshold in [0, 1] and up to three groups. Boxes are at most 2, 8
    or 40 pixels wide: on small ones the +1 widths of legacy=True change the kept set often."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n = draw(st.integers(min_boxes, 12))
    centres = draw(
        st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=3)
    )
    size = draw(st.sampled_from([2.0, 8.0, 40.0]))
    offset, extent = st.floats(-size / 4, size / 4), st.floats(0, size)
    rows = []
    for _ in range(n):
        cx, cy = draw(st.sampled_from(centres))
        x1, y1 = cx + draw(offset), cy + draw(offset)
        rows.append([x1, y1, x1 + draw(extent), y1 + draw(extent)])
    score = st.one_of(st.floats(0, 1), st.sampled_from([0.25, 0.5]))
    scores = torch.tensor(draw(st.lists(score, min_size=n, max_size=n)), dtype=dtype)
    groups = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    idxs = torch.tensor(groups, dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    boxes = torch.tensor(rows, dtype=dtype).reshape(n, 4)
    return boxes, scores, idxs, draw(st.floats(0, 1)), draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(call=_nms_call())
def test_valid_calls_match_the_references(call):
    """Every draw is a valid call (asserted), so every draw reaches the comparisons: the kernels'
    kept indices equal the pure-PyTorch references', and torchvision's without +1 widths."""
    boxes, scores, idxs, threshold, legacy = call
    assert (boxes[:, 2:] >= boxes[:, :2]).all() and scores.isfinite().all()
    kept = nms(boxes, scores, threshold, legacy)
    assert torch.equal(kept, nms_reference(boxes, scores, threshold, legacy))
    grouped = batched_nms(boxes, scores, idxs, threshold, legacy)
    assert torch.equal(grouped, batched_nms_reference(boxes, scores, idxs, threshold, legacy))
    if not legacy:
        assert torch.equal(kept, torchvision.ops.nms(boxes, scores, threshold))
        assert torch.equal(grouped, torchvision.ops.batched_nms(boxes, scores, idxs, threshold))
    assert torch.equal(nms_mask(boxes, scores, threshold, legacy).nonzero()[:, 0], kept.sort()[0])
    mask = batched_nms_mask(boxes, scores, idxs, threshold, legacy)
    assert torch.equal(mask.nonzero()[:, 0], grouped.sort()[0])
    event("valid call")
    event(f"suppressed some: {len(kept) < len(boxes)}")
    other = nms(boxes, scores, threshold, not legacy)
    event(f"+1 widths change the kept set: {not torch.equal(kept, other)}")


_SINGLE = (nms, nms_mask, nms_reference)
_BATCHED = (batched_nms, batched_nms_mask, batched_nms_reference)
# Each corruption of one field: (error, message, whether only the batched ops take the field).
_NMS_CORRUPTIONS = {
    "NaN box coordinate": (ValueError, "boxes contains NaN", False),
    "NaN score": (ValueError, "scores contains NaN", False),
    "boxes not [N, 4]": (ValueError, r"boxes must have shape \[N, 4\]", False),
    "boxes of another length than scores": (
        ValueError,
        r"scores must have shape \[\d+\] to match boxes",
        False,
    ),
    "boxes not float32/float64": (ValueError, "boxes must be float32 or float64", False),
    "scores of another dtype": (ValueError, "scores must have the dtype of boxes", False),
    "boxes not a Tensor": (TypeError, "boxes must be a Tensor", False),
    "NaN threshold": (ValueError, "iou_threshold must not be NaN", False),
    "threshold not a number": (TypeError, "iou_threshold must be a real number", False),
    "legacy not a bool": (TypeError, "legacy must be a bool", False),
    "idxs not integers": (ValueError, "idxs must have an integer dtype", True),
    "idxs of another length": (ValueError, r"idxs must have shape \[\d+\] to match boxes", True),
}


def _corrupt_nms_call(name: str, call: tuple, draw) -> tuple:
    """The valid `call` with the one field that corruption `name` spoils made invalid."""
    boxes, scores, idxs, threshold, legacy = call
    row = draw(st.integers(0, len(boxes) - 1))
    if name == "NaN box coordinate":
        boxes = boxes.clone()
        boxes[row, draw(st.integers(0, 3))] = _NAN
    elif name == "NaN score":
        scores = scores.clone()
        scores[row] = _NAN
    elif name == "boxes not [N, 4]":
        boxes = draw(
            st.sampled_from([boxes[:, :3], torch.cat([boxes, boxes[:, :1]], 1), boxes[None]])
        )
    elif name == "boxes of another length than scores":
        boxes = draw(st.sampled_from([boxes[1:], torch.cat([boxes, boxes[:1]])]))
    elif name == "boxes not float32/float64":
        boxes = boxes.to(draw(st.sampled_from([torch.float16, torch.int64, torch.bfloat16])))
    elif name == "scores of another dtype":
        other = torch.float64 if scores.dtype == torch.float32 else torch.float32
        scores = scores.to(draw(st.sampled_from([other, torch.float16, torch.int64])))
    elif name == "boxes not a Tensor":
        boxes = boxes.tolist()
    elif name == "NaN threshold":
        threshold = _NAN
    elif name == "threshold not a number":
        threshold = draw(st.sampled_from(["0.5", None, True, torch.tensor(0.5)]))
    elif name == "legacy not a bool":
        legacy = draw(st.sampled_from([0, 1, "yes", None]))
    elif name == "idxs not integers":
        idxs = idxs.to(draw(st.sampled_from([torch.float32, torch.bool])))
    else:
        idxs = draw(st.sampled_from([idxs[1:], torch.cat([idxs, idxs[:1]]), idxs[None]]))
    return boxes, scores, idxs, threshold, legacy


@pytest.mark.parametrize("name", sorted(_NMS_CORRUPTIONS))
@settings(max_examples=6, deadline=None)
@given(call=_nms_call(min_boxes=1), data=st.data())
def test_one_corrupted_field_raises_its_error(name, call, data):
    """A valid call with exactly one field spoilt: each op and its reference refuse it with the
    error that names that field."""
    boxes, scores, idxs, threshold, legacy = _corrupt_nms_call(name, call, data.draw)
    error, message, batched_only = _NMS_CORRUPTIONS[name]
    calls = [(op, (boxes, scores, idxs, threshold, legacy)) for op in _BATCHED]
    if not batched_only:
        calls += [(op, (boxes, scores, threshold, legacy)) for op in _SINGLE]
    for op, args in calls:
        with pytest.raises(error, match=message):
            op(*args)


def tie_free(n: int, seed: int, dtype=torch.float32):
    """rpn_like boxes with distinct scores: float32 rand() ties often at thousands of boxes, and
    tied scores may be ordered differently by the CPU and CUDA sorts."""
    boxes, _ = rpn_like(n, seed, dtype)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return boxes, (perm.to(dtype) + 1) / (n + 1)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for seed in range(8):
        boxes, scores = tie_free(3000, seed)
        assert len(scores.unique()) == len(scores)
        idxs = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(seed))
        for legacy in (False, True):
            cpu = nms(boxes, scores, 0.7, legacy)
            assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.7, legacy).cpu(), cpu)
            gpu = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.7, legacy).cpu()
            assert torch.equal(gpu, batched_nms(boxes, scores, idxs, 0.7, legacy))
            mask = batched_nms_mask(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.7, legacy)
            assert torch.equal(mask.cpu(), batched_nms_mask(boxes, scores, idxs, 0.7, legacy))


@pytest.mark.cuda
def test_cuda_nms_mask_does_not_sync():
    boxes, scores = tie_free(4000, 0)
    boxes, scores = boxes.cuda(), scores.cuda()
    idxs = torch.randint(0, 12, (4000,), device="cuda")
    set_debug(False)  # the value checks sync by design
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        nms_mask(boxes, scores, 0.7)
        batched_nms_mask(boxes, scores, idxs, 0.7, legacy=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("legacy", [False, True])
def test_mask_equals_sorted_keep(device, legacy):
    for seed in range(6):
        n = [0, 1, 63, 64, 65, 700][seed]
        boxes, scores = rpn_like(n, seed, ties=seed % 2 == 0)
        boxes, scores = boxes.to(device), scores.to(device)
        idxs = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed)).to(device)
        mask = nms_mask(boxes, scores, 0.6, legacy)
        assert mask.dtype == torch.bool and mask.shape == (n,)
        keep = nms(boxes, scores, 0.6, legacy)
        assert torch.equal(mask.nonzero().squeeze(1), keep.sort().values)
        mask = batched_nms_mask(boxes, scores, idxs, 0.6, legacy)
        keep = batched_nms(boxes, scores, idxs, 0.6, legacy)
        assert torch.equal(mask.nonzero().squeeze(1), keep.sort().values)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_legacy_matches_reference(device, dtype):
    for seed in range(8):
        n = [2, 30, 64, 65, 300, 129, 7, 200][seed]
        boxes, scores = rpn_like(n, seed, dtype, ties=seed % 3 == 0)
        # Integer-ish corners, as the reference's boxes often are: many exact +1 overlaps.
        boxes = boxes.round() if seed % 2 else boxes
        boxes, scores = boxes.to(device), scores.to(device)
        for threshold in (0.3, 0.5, 0.7):
            expected = nms_reference(boxes, scores, threshold, legacy=True)
            assert torch.equal(nms(boxes, scores, threshold, legacy=True), expected)
            idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
            idxs = idxs.to(device)
            assert torch.equal(
                batched_nms(boxes, scores, idxs, threshold, legacy=True),
                batched_nms_reference(boxes, scores, idxs, threshold, legacy=True),
            )


def test_legacy_golden_tiny():
    boxes = torch.tensor([[0, 0, 9, 9], [1, 1, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    # +1 widths: IoU = 9 * 9 / (100 + 100 - 81) = 0.681; torchvision's: 8 * 8 / (81 + 81 - 64) = 0.653.
    assert nms(boxes, scores, 0.66, legacy=True).tolist() == [0]
    assert nms(boxes, scores, 0.66).tolist() == [0, 1]
    # 1-pixel-high boxes sharing one column: IoU 1 / (2 + 2 - 1) = 1/3 only with +1 widths; the
    # reference compares its float IoU with float(1/3) (equal: kept), torchvision in float64.
    line = torch.tensor([[0, 0, 1, 0], [1, 0, 2, 0.0]])
    assert nms(line, scores, 1 / 3, legacy=True).tolist() == [0, 1]
    assert nms(line, scores, 0.33, legacy=True).tolist() == [0]
    assert nms(line, scores, 0.0).tolist() == [0, 1]  # no +1: the boxes are empty


def test_bitmask_emulation_matches_cpu_kernel():
    """The CUDA kernels' arithmetic (csrc/common/nms_bitmask.h) run serially on the host: the
    row blocks' column words and the per-group reduction give the CPU kernel's kept set, and the
    reduction never reads a mask word the mask kernel did not write (the hook raises if it does)."""
    ext = extension.load()
    for seed in range(8):
        n = [1, 64, 65, 300, 1000, 129, 500, 2000][seed]
        groups = [1, 1, 3, 7, 40, 2, 500, 6][seed]
        boxes, scores = tie_free(n, seed)
        idxs = torch.randint(0, groups, (n,), generator=torch.Generator().manual_seed(seed))
        order = scores.sort(descending=True, stable=True).indices
        by_group = idxs[order].sort(stable=True).indices
        sorted_idx = order[by_group]
        for legacy in (False, True):
            keep = ext._nms_bitmask_emulation(boxes[sorted_idx], idxs[sorted_idx], 0.6, legacy)
            expected = batched_nms_mask(boxes, scores, idxs, 0.6, legacy)
            assert torch.equal(keep, expected[sorted_idx]), (seed, legacy)
            single = ext._nms_bitmask_emulation(boxes[order], None, 0.6, legacy)
            assert torch.equal(single, nms_mask(boxes, scores, 0.6, legacy)[order])


def test_batched_column_words_stay_within_groups():
    """Each 64-row block of the CUDA batched NMS computes only the words up to its last group's
    end: at the DGX-1 batch (6 images x 5 levels, ~53k boxes) a few percent of the full square
    the kernel computed before."""
    ext = extension.load()
    for sizes in ([2000, 2000, 2000, 2000, 1000] * 6, [1, 63, 64, 65, 300, 1], [5000]):
        groups = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
        n = len(groups)
        words = ext._nms_column_words(groups)
        ends = torch.tensor(sizes).cumsum(0)
        for block, (begin, end) in enumerate(words.tolist()):
            last_row = min(n, 64 * (block + 1)) - 1
            group_end = int(ends[groups[last_row]])
            assert begin == block and end == (group_end + 63) // 64, (block, begin, end)
        computed = int((words[:, 1] - words[:, 0]).sum())
        square = len(words) * (len(words) + 1) // 2
        if len(sizes) == 30:
            assert computed < 0.05 * square, (computed, square)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        ext._nms_column_words(torch.tensor([1, 0]))


def test_nan_without_debug_checks_stays_in_bounds():
    set_debug(False)
    boxes, scores = rpn_like(200, 0)
    boxes[::7] = float("nan")
    scores[::5] = float("nan")
    idxs = torch.randint(0, 4, (200,))
    assert nms(boxes, scores, 0.5).numel() <= 200
    assert batched_nms_mask(boxes, scores, idxs, 0.5).shape == (200,)


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", devices())
def test_opcheck(device, full):
    boxes, scores = tie_free(150, 1)
    boxes, scores = boxes.to(device), scores.to(device)
    idxs = torch.randint(0, 4, (150,)).to(device)
    for op in (library().nms, library().nms_mask):
        for args in ((boxes, scores, None, 0.5, False), (boxes, scores, idxs, 0.7, True)):
            opcheck(op.default, args, full)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(dtype):
    boxes, scores = tie_free(300, 2)
    idxs = torch.randint(0, 3, (300,))
    with torch.autocast("cpu", dtype=dtype):
        mask = library().nms_mask(boxes.to(dtype), scores.to(dtype), idxs, 0.6)
    expected = batched_nms_mask(boxes.to(dtype).float(), scores.to(dtype).float(), idxs, 0.6)
    assert torch.equal(mask, expected)
