import numpy as np
import pytest
import torch

from harness.data.batch import Normalization
from harness.data.transforms import make_target, normalize, pad_batch, resized_size


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (800, 1066)),  # int(800 * 640 / 480) truncates
        ((640, 480), (1066, 800)),
        ((427, 640), (800, 1199)),
        # Longer side capped: short = round(1333 * 200 / 1000) = 267, long = int(267 * 5) = 1335; the
        # reference's rounding lets the longer side pass max_size by a few pixels, and so do we.
        ((200, 1000), (267, 1335)),
        ((1000, 200), (1335, 267)),
        ((800, 800), (800, 800)),
        ((1, 2), (666, 1332)),  # tie: round(666.5) = 666, half to even like Python's round()
        ((2, 1), (1332, 666)),
    ],
)
def test_resized_size_follows_the_reference(hw, expected):
    assert resized_size(*hw, 800, 1333) == expected


def test_resized_size_rejects_empty_images():
    with pytest.raises(ValueError, match="height=0"):
        resized_size(0, 10, 800, 1333)


def _two_objects():
    boxes = np.array([[10, 20, 29, 39], [0, 0, 99, 49]], dtype=np.float32)
    ranges = np.array([[0, 0, 3], [1, 3, 6], [1, 6, 10]])
    verts = np.array(
        [
            [10, 20],
            [29, 20],
            [10, 39],
            [0, 0],
            [5, 0],
            [0, 5],
            [50, 10],
            [60, 10],
            [60, 20],
            [50, 20],
        ],
        dtype=np.float32,
    )
    return boxes, np.array([7, 3]), ranges, verts


def test_make_target_resizes_then_flips_with_the_plus_one_convention():
    boxes, cats, ranges, verts = _two_objects()
    t = make_target(boxes, cats, ranges, verts, {3: 1, 7: 2}, 5, (50, 100), (100, 200), flip=True)
    torch.testing.assert_close(t.boxes[0], torch.tensor([141.0, 40.0, 179.0, 78.0]))
    torch.testing.assert_close(t.boxes[1], torch.tensor([1.0, 0.0, 199.0, 98.0]))
    torch.testing.assert_close(
        t.polygons.vertices[:3], torch.tensor([[179.0, 40], [141, 40], [179, 78]])
    )
    assert t.labels.tolist() == [2, 1]
    assert t.polygons.poly_offsets.tolist() == [0, 3, 6, 10]
    assert t.polygons.obj_offsets.tolist() == [0, 1, 3]
    assert (t.image_id, t.image_size, t.orig_size, t.flipped) == (5, (100, 200), (50, 100), True)


def test_make_target_without_flip_only_scales():
    boxes, cats, ranges, verts = _two_objects()
    t = make_target(boxes, cats, ranges, verts, {3: 1, 7: 2}, 5, (50, 100), (100, 200), flip=False)
    torch.testing.assert_close(t.boxes, torch.from_numpy(boxes * 2))
    torch.testing.assert_close(t.polygons.vertices, torch.from_numpy(verts * 2))


def test_make_target_empty_image():
    t = make_target(
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros((0, 3)),
        np.zeros((0, 2)),
        {},
        1,
        (10, 10),
        (20, 20),
        True,
    )
    assert t.boxes.shape == (0, 4) and t.labels.shape == (0,) and t.polygons.num_objects == 0


def test_make_target_bad_input():
    boxes, cats, ranges, verts = _two_objects()
    with pytest.raises(ValueError, match="category id 7"):
        make_target(boxes, cats, ranges, verts, {3: 1}, 5, (50, 100), (50, 100), False)
    with pytest.raises(ValueError, match="at least one polygon"):
        make_target(boxes, cats, ranges[:1], verts, {3: 1, 7: 2}, 5, (50, 100), (50, 100), False)


def test_normalize_caffe2_is_bgr_255_minus_mean():
    image = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    out = normalize(image, Normalization.caffe2())
    expected = torch.tensor([30 - 102.9801, 20 - 115.9465, 10 - 122.7717])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_normalize_torchvision_is_rgb_01_mean_std():
    image = torch.full((3, 1, 1), 255, dtype=torch.uint8)
    out = normalize(image, Normalization.torchvision())
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[:, 0, 0], expected)
    with pytest.raises(ValueError, match="uint8"):
        normalize(image.float(), Normalization.torchvision())


def test_pad_batch_pads_bottom_right_with_zeros_to_the_divisibility():
    a, b = torch.ones(3, 40, 33), torch.full((3, 20, 70), 2.0)
    out = pad_batch([a, b], 32)
    assert out.shape == (2, 3, 64, 96)
    assert (out[0, :, :40, :33] == 1).all() and out[0, :, 40:].abs().sum() == 0
    assert out[0, :, :, 33:].abs().sum() == 0 and (out[1, :, :20, :70] == 2).all()
    assert pad_batch([a], 0).shape == (1, 3, 40, 33)
