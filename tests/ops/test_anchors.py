"""generate_anchors (the MLPerf reference's legacy anchors) and anchor_visibility."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from harness.ops import anchor_visibility, generate_anchors, generate_anchors_reference
from tests.conftest import devices

FPN_FEATURES = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # 800 x 1344 input
FPN_STRIDES = [4, 8, 16, 32, 64]
FPN_SIZES = [32, 64, 128, 256, 512]
RATIOS = [0.5, 1.0, 2.0]


def test_golden_stride16_size32():
    # Base box [0, 0, 15, 15]: w = h = 16, centre 7.5; size 32 scales widths and heights by 2.
    #   ratio 0.5: w = round(sqrt(256 / 0.5)) = round(22.63) = 23, h = round(11.5) = 12 (to even)
    #              -> 46 x 24: (7.5 - 22.5, 7.5 - 11.5, 7.5 + 22.5, 7.5 + 11.5) = (-15, -4, 30, 19)
    #   ratio 1:   16 x 16 -> 32 x 32: (-8, -8, 23, 23)
    #   ratio 2:   w = round(sqrt(128)) = 11, h = 22 -> 22 x 44: (-3, -14, 18, 29)
    # The second grid cell (y = 0, x = 1) adds 16 to x.
    cells = [[-15, -4, 30, 19], [-8, -8, 23, 23], [-3, -14, 18, 29]]
    shifted = [[x1 + 16, y1, x2 + 16, y2] for x1, y1, x2, y2 in cells]
    (anchors,) = generate_anchors([(1, 2)], [16], [32], RATIOS)
    assert anchors.dtype == torch.float32
    assert anchors.tolist() == cells + shifted


def test_golden_rounds_half_to_even():
    # Stride 18, ratio 0.5: w = round(sqrt(324 / 0.5)) = round(25.46) = 25, h = round(12.5) = 12
    # (np.round; half-up would give 13). Centre 8.5: (8.5 - 12, 8.5 - 5.5, 8.5 + 12, 8.5 + 5.5).
    (anchors,) = generate_anchors([(1, 1)], [18], [18], [0.5])
    assert anchors.tolist() == [[-3.5, 3.0, 20.5, 14.0]]


@pytest.mark.parametrize("device", devices())
def test_all_fpn_levels_match_reference(device):
    ours = generate_anchors(FPN_FEATURES, FPN_STRIDES, FPN_SIZES, RATIOS, device=device)
    expected = generate_anchors_reference(FPN_FEATURES, FPN_STRIDES, FPN_SIZES, RATIOS)
    assert len(ours) == 5
    for level, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert a.device.type == device
        assert a.shape == (FPN_FEATURES[level][0] * FPN_FEATURES[level][1] * 3, 4)
        assert torch.equal(a.cpu(), b), level


def test_detectron_published_cell_anchors():
    # Detectron's generate_anchors docstring lists these for stride 16, size 128.
    (anchors,) = generate_anchors([(1, 1)], [16], [128], RATIOS)
    assert anchors.tolist() == [[-84, -40, 99, 55], [-56, -56, 71, 71], [-36, -80, 51, 95]]


def test_odd_configs_match_reference():
    args = ([(3, 5), (0, 4), (2, 1)], [5, 7, 12], [17.0, 33.3, 100.0], [0.25, 0.7, 1.0, 3.0])
    ours = generate_anchors(*args)
    assert ours[1].shape == (0, 4)
    for a, b in zip(ours, generate_anchors_reference(*args), strict=True):
        assert torch.equal(a, b)


def test_visibility_golden():
    anchors = torch.tensor(
        [[-1, 0, 10, 5], [0, 0, 19, 9], [0, 0, 20, 9], [0, 0, 19, 10], [0, -1.5, 5, 5]]
    )
    image = (10, 20)  # (height, width)
    assert anchor_visibility(anchors, image, 0).tolist() == [False, True, False, False, False]
    assert anchor_visibility(anchors, image, 1).tolist() == [True, True, True, True, False]
    assert anchor_visibility(anchors, image, -1).tolist() == [True] * 5


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"feature_sizes": []}, ValueError, "feature_sizes must hold"),
        ({"feature_sizes": [(2, -1)]}, ValueError, r"feature_sizes\[0\]"),
        ({"feature_sizes": [(2, 2.5)]}, ValueError, r"feature_sizes\[0\]"),
        ({"strides": [0]}, ValueError, r"strides\[0\]"),
        ({"strides": [4.0]}, ValueError, r"strides\[0\]"),
        ({"strides": [4, 8]}, ValueError, "strides must hold one value per level"),
        ({"sizes": [float("inf")]}, ValueError, r"sizes\[0\]"),
        ({"sizes": 32}, TypeError, "sizes must be a sequence"),
        ({"aspect_ratios": []}, ValueError, "aspect_ratios must not be empty"),
        ({"aspect_ratios": [1.0, -2.0]}, ValueError, r"aspect_ratios\[1\]"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"feature_sizes": [(2, 2)], "strides": [4], "sizes": [32], "aspect_ratios": [1.0]}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        generate_anchors(**args)


def test_visibility_bad_arguments():
    with pytest.raises(ValueError, match="anchors must have shape"):
        anchor_visibility(torch.zeros(3, 5), (10, 10), 0)
    with pytest.raises(ValueError, match="image_size"):
        anchor_visibility(torch.zeros(3, 4), (10,), 0)
    with pytest.raises(ValueError, match="straddle_thresh"):
        anchor_visibility(torch.zeros(3, 4), (10, 10), float("nan"))


@st.composite
def _anchor_call(draw):
    """Valid generate_anchors arguments: 1-4 levels of (height, width) >= 1, positive int strides,
    positive finite sizes and 1-4 positive finite aspect ratios (ints or floats, as configs hold)."""
    levels = draw(st.integers(1, 4))
    feature_sizes = draw(
        st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=levels, max_size=levels)
    )
    strides = draw(st.lists(st.integers(1, 64), min_size=levels, max_size=levels))
    positive = st.floats(1, 600) | st.integers(1, 600)
    sizes = draw(st.lists(positive, min_size=levels, max_size=levels))
    aspect_ratios = draw(
        st.lists(st.floats(0.1, 10) | st.sampled_from([0.5, 1, 2]), min_size=1, max_size=4)
    )
    return feature_sizes, strides, sizes, aspect_ratios


@settings(max_examples=50, deadline=None)
@given(call=_anchor_call())
def test_valid_calls_match_the_reference(call):
    """Every draw is a valid call, so every draw reaches the comparison: the kernel's anchors equal
    the numpy reference's bit for bit, level by level, in (y, x, aspect ratio) order."""
    feature_sizes, strides, sizes, aspect_ratios = call
    levels = generate_anchors(feature_sizes, strides, sizes, aspect_ratios)
    expected = generate_anchors_reference(feature_sizes, strides, sizes, aspect_ratios)
    assert len(levels) == len(expected) == len(feature_sizes)
    for (height, width), got, want in zip(feature_sizes, levels, expected, strict=True):
        assert got.shape == (height * width * len(aspect_ratios), 4)
        assert torch.equal(got, want)
    event("valid call")


_SEQUENCE_FIELDS = ("feature_sizes", "strides", "sizes", "aspect_ratios")
# Each corruption of one argument and the error naming it.
_ANCHOR_CORRUPTIONS = {
    "no level or too many": (ValueError, "feature_sizes must hold 1 to 8 levels"),
    "a feature size not two ints >= 0": (
        ValueError,
        r"feature_sizes\[\d\] must be \(height, width\) ints >= 0",
    ),
    "strides not one per level": (ValueError, r"strides must hold one value per level"),
    "sizes not one per level": (ValueError, r"sizes must hold one value per level"),
    "a stride not a positive int": (ValueError, r"strides\[\d\] must be a positive int"),
    "a size not positive and finite": (ValueError, r"sizes\[\d\] must be a positive finite number"),
    "an aspect ratio not positive and finite": (
        ValueError,
        r"aspect_ratios\[\d\] must be a positive finite number",
    ),
    "no aspect ratio": (ValueError, "aspect_ratios must not be empty"),
    "an argument not a sequence": (
        TypeError,
        r"(feature_sizes|strides|sizes|aspect_ratios) must be a sequence",
    ),
}
_BAD_NUMBERS = [0, -2, 0.0, -1.5, math.nan, math.inf, True, None, "4"]


def _corrupt_anchor_call(name: str, call: tuple, draw) -> tuple:
    """The valid `call` with the one argument that corruption `name` spoils made invalid."""
    feature_sizes, strides, sizes, aspect_ratios = (list(v) for v in call)
    level = draw(st.integers(0, len(feature_sizes) - 1))
    if name == "no level or too many":
        count = draw(st.sampled_from([0, 9]))
        feature_sizes, strides, sizes = [(2, 2)] * count, [4] * count, [32] * count
    elif name == "a feature size not two ints >= 0":
        feature_sizes[level] = draw(
            st.sampled_from([(2, -1), (2.0, 3), (1, 2, 3), (True, 1), 4, "ab"])
        )
    elif name == "strides not one per level":
        strides = draw(st.sampled_from([strides[1:], [*strides, 8]]))
    elif name == "sizes not one per level":
        sizes = draw(st.sampled_from([sizes[1:], [*sizes, 8.0]]))
    elif name == "a stride not a positive int":
        strides[level] = draw(st.sampled_from([*_BAD_NUMBERS, 4.0]))
    elif name == "a size not positive and finite":
        sizes[level] = draw(st.sampled_from(_BAD_NUMBERS))
    elif name == "an aspect ratio not positive and finite":
        aspect_ratios[draw(st.integers(0, len(aspect_ratios) - 1))] = draw(
            st.sampled_from(_BAD_NUMBERS)
        )
    elif name == "no aspect ratio":
        aspect_ratios = []
    else:
        spoilt = [feature_sizes, strides, sizes, aspect_ratios]
        spoilt[draw(st.integers(0, 3))] = draw(st.sampled_from(["1, 2", 32, None, {1: 2}]))
        return tuple(spoilt)
    return feature_sizes, strides, sizes, aspect_ratios


@pytest.mark.parametrize("name", sorted(_ANCHOR_CORRUPTIONS))
@settings(max_examples=6, deadline=None)
@given(call=_anchor_call(), data=st.data())
def test_one_corrupted_argument_raises_its_error(name, call, data):
    """A valid call with exactly one argument spoilt is refused, by the op and by its reference,
    with the error naming it."""
    error, message = _ANCHOR_CORRUPTIONS[name]
    args = _corrupt_anchor_call(name, call, data.draw)
    for op in (generate_anchors, generate_anchors_reference):
        with pytest.raises(error, match=message):
            op(*args)
