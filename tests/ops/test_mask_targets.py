"""mask_targets against the MLPerf reference's per-ROI pycocotools path, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from harness.data.batch import Polygons
from harness.ops import library, mask_targets, mask_targets_reference, set_debug
from tests.conftest import devices


def _star(gen: torch.Generator, cx: float, cy: float, radius: float, n: int) -> list[float]:
    """A star-shaped polygon (concave in general) of n vertices around (cx, cy), flat x, y."""
    angles = torch.sort(torch.rand(n, generator=gen) * 2 * math.pi).values
    radii = radius * (0.4 + 0.6 * torch.rand(n, generator=gen))
    xy = torch.stack([cx + radii * torch.cos(angles), cy + radii * torch.sin(angles)], 1)
    return xy.reshape(-1).tolist()


def coco_like_case(
    gen: torch.Generator,
    num_images: int,
    rois_per_image: int,
    image_size: tuple[int, int] = (800, 1344),
    objects_per_image: tuple[int, int] = (3, 15),
) -> tuple[Polygons, Tensor, Tensor]:
    """A batch shaped like COCO training: objects of 1-3 polygons with 10-60 vertices each, and
    positive ROIs jittered around the objects' boxes. Returns (Polygons.cat of the images, rois
    [K, 4] float32, roi_objects [K] int64 indexing the concatenated objects)."""
    height, width = image_size
    parts, rois, roi_objects = [], [], []
    first_object = 0
    for _ in range(num_images):
        num_objects = int(torch.randint(*objects_per_image, (1,), generator=gen))
        objects = []
        for _ in range(num_objects):
            size = float(torch.empty(1).uniform_(16, 300, generator=gen))
            cx = float(torch.empty(1).uniform_(size / 2, width - size / 2, generator=gen))
            cy = float(torch.empty(1).uniform_(size / 2, height - size / 2, generator=gen))
            polys = []
            for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
                offset = (torch.rand(2, generator=gen) - 0.5) * size / 2
                n = int(torch.randint(10, 61, (1,), generator=gen))
                poly = _star(gen, cx + float(offset[0]), cy + float(offset[1]), size / 3, n)
                polys.append(
                    [
                        min(max(v, 0.0), float(width if i % 2 == 0 else height))
                        for i, v in enumerate(poly)
                    ]
                )
            objects.append(polys)
        polygons = Polygons.from_lists(objects)
        parts.append(polygons)
        obj_of_vertex = torch.repeat_interleave(
            torch.repeat_interleave(torch.arange(num_objects), polygons.obj_offsets.diff()),
            polygons.poly_offsets.diff(),
        )
        lo = torch.full((num_objects, 2), math.inf).scatter_reduce(
            0, obj_of_vertex[:, None].expand(-1, 2), polygons.vertices, "amin"
        )
        hi = torch.full((num_objects, 2), -math.inf).scatter_reduce(
            0, obj_of_vertex[:, None].expand(-1, 2), polygons.vertices, "amax"
        )
        pick = torch.randint(0, num_objects, (rois_per_image,), generator=gen)
        box = torch.cat([lo[pick], hi[pick]], 1)
        extent = (box[:, 2:] - box[:, :2]).repeat(1, 2)
        rois.append(box + extent * (torch.rand(rois_per_image, 4, generator=gen) - 0.5) * 0.4)
        roi_objects.append(pick + first_object)
        first_object += num_objects
    return Polygons.cat(parts), torch.cat(rois), torch.cat(roi_objects)


def tricky_case(gen: torch.Generator, num_rois: int) -> tuple[Polygons, Tensor, Tensor]:
    """Polygons and ROIs that stress the rasterizer's corner cases: convex, concave and
    self-intersecting polygons, several per object, vertices on the 1/2 and 1/5 pixel grids or
    fractional, ROIs tiny, huge, degenerate (x2 <= x1) or beside the object."""
    objects, centres, radii = [], [], []
    for _ in range(6):
        cx, cy = (float(v) for v in torch.rand(2, generator=gen) * 100 + 20)
        radius = float(torch.rand(1, generator=gen)) * 40 + 0.3
        polys = []
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            n = int(torch.randint(3, 20, (1,), generator=gen))
            poly = torch.tensor(_star(gen, cx, cy, radius, n))
            kind = int(torch.randint(0, 4, (1,), generator=gen))
            if kind == 1:
                poly = torch.round(poly * 2) / 2
            elif kind == 2:
                poly = torch.round(poly * 5) / 5
            elif kind == 3:  # vertices in random order: self-intersecting
                poly = poly.reshape(-1, 2)[torch.randperm(n, generator=gen)].reshape(-1)
            polys.append(poly.tolist())
        objects.append(polys)
        centres.append([cx, cy])
        radii.append(radius)
    polygons = Polygons.from_lists(objects)
    roi_objects = torch.randint(0, len(objects), (num_rois,), generator=gen)
    radius = torch.tensor(radii)[roi_objects, None]
    centre = (
        torch.tensor(centres)[roi_objects] + torch.randn(num_rois, 2, generator=gen) * radius / 2
    )
    scales = torch.tensor([0.3, 3.0, 30.0, 300.0])
    size = (
        torch.rand(num_rois, 2, generator=gen)
        * scales[torch.randint(0, 4, (num_rois, 1), generator=gen)]
    )
    size[torch.rand(num_rois, generator=gen) < 0.1] *= -1  # degenerate: x2 < x1 or y2 < y1
    rois = torch.cat([centre - size / 2, centre + size / 2], 1)
    return polygons, rois, roi_objects


def _nontrivial(masks: Tensor) -> int:
    """How many masks are neither empty nor full (a comparison on those can fail)."""
    filled = masks.flatten(1).mean(1)
    return int(((filled > 0) & (filled < 1)).sum())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mask_size", [28, 7, 1])
def test_equals_reference_on_tricky_cases(device: str, mask_size: int) -> None:
    gen = torch.Generator().manual_seed(mask_size)
    for _ in range(4):
        polygons, rois, roi_objects = tricky_case(gen, 60)
        expected = mask_targets_reference(polygons, rois, roi_objects, mask_size)
        got = mask_targets(polygons.to(device), rois.to(device), roi_objects.to(device), mask_size)
        assert got.dtype == torch.float32 and got.device.type == device
        assert torch.equal(got.cpu(), expected)
        filled = expected.flatten(1).mean(1)
        assert int((filled == 0).sum()) >= 5 and int((filled == 1).sum()) >= 5
        assert mask_size == 1 or _nontrivial(expected) >= 15


@pytest.mark.parametrize("device", devices())
def test_equals_reference_on_coco_like_batch(device: str) -> None:
    polygons, rois, roi_objects = coco_like_case(torch.Generator().manual_seed(1), 2, 64)
    expected = mask_targets_reference(polygons, rois, roi_objects)
    got = mask_targets(polygons.to(device), rois.to(device), roi_objects.to(device))
    assert torch.equal(got.cpu(), expected)
    assert _nontrivial(expected) > 100


@pytest.mark.parametrize("device", devices())
def test_noncontiguous_inputs(device: str) -> None:
    polygons, rois, roi_objects = tricky_case(torch.Generator().manual_seed(2), 40)
    wide = torch.zeros(40, 6, device=device)
    wide[:, 1:5] = rois.to(device)
    strided = torch.stack([roi_objects, roi_objects], 1).to(device)[:, 0]
    vertices_t = polygons.vertices.t().contiguous().t()
    assert not wide[:, 1:5].is_contiguous() and not strided.is_contiguous()
    odd = Polygons(
        vertices_t.to(device), polygons.poly_offsets.to(device), polygons.obj_offsets.to(device)
    )
    got = mask_targets(odd, wide[:, 1:5], strided)
    assert torch.equal(got.cpu(), mask_targets_reference(polygons, rois, roi_objects))


@pytest.mark.cuda
def test_cuda_equals_cpu() -> None:
    polygons, rois, roi_objects = coco_like_case(torch.Generator().manual_seed(3), 2, 256)
    tricky = tricky_case(torch.Generator().manual_seed(4), 256)
    for mask_size in (28, 56):
        for case in ((polygons, rois, roi_objects), tricky):
            cpu = mask_targets(*case, mask_size)
            cuda = mask_targets(case[0].to("cuda"), case[1].cuda(), case[2].cuda(), mask_size)
            assert torch.equal(cuda.cpu(), cpu)


def test_golden_square_covering_the_roi() -> None:
    square = Polygons.from_lists([[[0, 0, 4, 0, 4, 4, 0, 4]]])
    rois = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    got = mask_targets(square, rois, torch.tensor([0]), 4)
    assert torch.equal(got[0], torch.ones(4, 4))


def test_golden_inner_square_and_triangle() -> None:
    """Worked by hand on pycocotools' 5x grid: a column is inside where its centre x = c + 0.5 is;
    an edge at fine y v starts the fill at row ceil((v + .5) / 5 - .5), rows >= M dropped."""
    polygons = Polygons.from_lists([[[1, 1, 3, 1, 3, 3, 1, 3]], [[0, 0, 4, 0, 0, 4]]])
    rois = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 2)
    got = mask_targets(polygons, rois, torch.tensor([0, 1]), 4)
    inner = torch.tensor([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # Hypotenuse x + y = 4: column c (centre c + .5) is crossed at fine x 5c + 2.5, where the
    # edge's lower fine y is 17 - 5c, so column c fills rows 0 .. 2 - c.
    triangle = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert torch.equal(got, torch.stack([inner, triangle]).float())
    assert torch.equal(got, mask_targets_reference(polygons, rois, torch.tensor([0, 1]), 4))


def test_roi_crop_and_scale() -> None:
    """The ROI maps onto the M x M grid: the square (10, 20)-(14, 24) inside ROI (10, 20, 18, 28)
    covers the upper-left quarter of an 8x8 target."""
    square = Polygons.from_lists([[[10, 20, 14, 20, 14, 24, 10, 24]]])
    got = mask_targets(square, torch.tensor([[10.0, 20.0, 18.0, 28.0]]), torch.tensor([0]), 8)
    expected = torch.zeros(8, 8)
    expected[:4, :4] = 1
    assert torch.equal(got[0], expected)


def test_degenerate_roi_is_one_pixel_wide() -> None:
    """The reference widens x2 - x1 < 1 to 1: x2 <= x1 rasterizes like x2 = x1 + 1."""
    polygons, _, _ = tricky_case(torch.Generator().manual_seed(5), 1)
    x1y1 = torch.tensor([[40.0, 50.0], [60.0, 30.0], [70.0, 70.0]])
    collapsed = torch.cat([x1y1, x1y1 - torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.5, 2.0]])], 1)
    widened = torch.cat([x1y1, x1y1 + 1], 1)
    objects = torch.tensor([0, 1, 2])
    assert torch.equal(
        mask_targets(polygons, collapsed, objects, 28),
        mask_targets(polygons, widened, objects, 28),
    )


def test_invariant_to_translation_and_power_of_two_scaling() -> None:
    """Image and ROIs moved or scaled together give the same targets (exact in float32 for vertices
    on a 1/8 grid, integer shifts and power-of-two scales)."""
    polygons, rois, roi_objects = tricky_case(torch.Generator().manual_seed(6), 50)
    vertices = torch.round(polygons.vertices * 8) / 8
    # The reference widens ROIs narrower than 1 pixel, which scaling would change.
    keep = ((rois[:, 2:] - rois[:, :2]) >= 1).all(1)
    rois, roi_objects = torch.round(rois[keep] * 8) / 8, roi_objects[keep]
    base = Polygons(vertices, polygons.poly_offsets, polygons.obj_offsets)
    expected = mask_targets(base, rois, roi_objects)
    assert _nontrivial(expected) > 10
    shift = torch.tensor([37.0, -11.0])
    moved = Polygons(vertices + shift, polygons.poly_offsets, polygons.obj_offsets)
    assert torch.equal(mask_targets(moved, rois + shift.repeat(2), roi_objects), expected)
    scaled = Polygons(vertices * 4, polygons.poly_offsets, polygons.obj_offsets)
    assert torch.equal(mask_targets(scaled, rois * 4, roi_objects), expected)


def test_batch_of_images_equals_images_one_by_one() -> None:
    gen = torch.Generator().manual_seed(7)
    a, b = tricky_case(gen, 20), tricky_case(gen, 30)
    joined = mask_targets(
        Polygons.cat([a[0], b[0]]),
        torch.cat([a[1], b[1]]),
        torch.cat([a[2], b[2] + a[0].num_objects]),
    )
    assert torch.equal(joined, torch.cat([mask_targets(*a), mask_targets(*b)]))


@pytest.mark.parametrize("device", devices())
def test_empty_inputs(device: str) -> None:
    polygons, _, _ = tricky_case(torch.Generator().manual_seed(8), 1)
    none = torch.zeros(0, 4, device=device)
    got = mask_targets(polygons.to(device), none, torch.zeros(0, dtype=torch.int64, device=device))
    assert got.shape == (0, 28, 28) and got.dtype == torch.float32 and got.device.type == device
    no_objects = Polygons.from_lists([]).to(device)
    got = mask_targets(no_objects, none, torch.zeros(0, dtype=torch.int64, device=device), 5)
    assert got.shape == (0, 5, 5)


@pytest.mark.parametrize("device", devices())
def test_object_without_polygons_gives_zeros(device: str) -> None:
    polygons = Polygons.from_lists([[[0, 0, 9, 0, 9, 9]], [], [[2, 2, 8, 2, 8, 8, 2, 8]]])
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    got = mask_targets(polygons.to(device), rois.to(device), torch.tensor([0, 1, 2]).to(device))
    assert got[0].sum() > 0 and got[2].sum() > 0
    assert torch.equal(got[1].cpu(), torch.zeros(28, 28))


def _valid() -> tuple[Polygons, Tensor, Tensor]:
    polygons = Polygons.from_lists([[[0, 0, 9, 0, 9, 9]], [[1, 1, 5, 1, 5, 5], [6, 6, 8, 6, 8, 8]]])
    return (
        polygons,
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0]]),
        torch.tensor([0, 1]),
    )


def _with(polygons: Polygons, **fields: Tensor) -> Polygons:
    parts = {
        "vertices": polygons.vertices,
        "poly_offsets": polygons.poly_offsets,
        "obj_offsets": polygons.obj_offsets,
    } | fields
    return Polygons(**parts)


@pytest.mark.parametrize("op", [mask_targets, mask_targets_reference])
def test_bad_arguments_name_the_argument(op) -> None:
    polygons, rois, objs = _valid()
    nan = float("nan")
    cases = [
        (TypeError, "polygons must be", ([[0, 0, 1, 0, 1, 1]], rois, objs, 28)),
        (
            TypeError,
            "polygons.vertices must be torch.float32",
            (_with(polygons, vertices=polygons.vertices.double()), rois, objs, 28),
        ),
        (
            ValueError,
            r"polygons.vertices must be \[V, 2\]",
            (_with(polygons, vertices=polygons.vertices.reshape(-1)), rois, objs, 28),
        ),
        (
            TypeError,
            "polygons.poly_offsets must be torch.int64",
            (_with(polygons, poly_offsets=polygons.poly_offsets.int()), rois, objs, 28),
        ),
        (
            ValueError,
            "polygons.poly_offsets must run from 0",
            (_with(polygons, poly_offsets=polygons.poly_offsets[:-1]), rois, objs, 28),
        ),
        (
            ValueError,
            "polygons.obj_offsets must run from 0",
            (_with(polygons, obj_offsets=torch.tensor([0, 1, 2])), rois, objs, 28),
        ),
        (
            ValueError,
            "polygons.obj_offsets must be non-decreasing",
            (
                _with(polygons, obj_offsets=torch.tensor([0, 2, 1, 3])),
                rois,
                torch.tensor([0, 0]),
                28,
            ),
        ),
        (
            ValueError,
            "object 1 polygon 1 has 2 vertices",
            (
                _with(
                    polygons,
                    poly_offsets=torch.tensor([0, 3, 7, 9]),
                    vertices=polygons.vertices[:9],
                ),
                rois,
                objs,
                28,
            ),
        ),
        (TypeError, "rois must be torch.float32", (polygons, rois.double(), objs, 28)),
        (ValueError, r"rois must be \[K, 4\]", (polygons, rois[:, :3], objs, 28)),
        (TypeError, "roi_objects must be torch.int64", (polygons, rois, objs.int(), 28)),
        (ValueError, r"roi_objects must be \[K=2\]", (polygons, rois, objs[:1], 28)),
        (
            ValueError,
            r"roi_objects must index objects in \[0, 2\)",
            (polygons, rois, torch.tensor([0, 2]), 28),
        ),
        (
            ValueError,
            r"roi_objects must index objects",
            (polygons, rois, torch.tensor([-1, 0]), 28),
        ),
        (
            ValueError,
            "polygons.vertices must be finite",
            (
                _with(polygons, vertices=polygons.vertices.index_fill(0, torch.tensor([4]), nan)),
                rois,
                objs,
                28,
            ),
        ),
        (
            ValueError,
            "polygons.vertices must be finite",
            (_with(polygons, vertices=polygons.vertices * 1e6), rois, objs, 28),
        ),
        (
            ValueError,
            "rois must be finite",
            (polygons, rois.index_fill(1, torch.tensor([2]), nan), objs, 28),
        ),
        (ValueError, "rois must be finite", (polygons, rois - math.inf, objs, 28)),
        (TypeError, "mask_size must be an int", (polygons, rois, objs, 28.0)),
        (TypeError, "mask_size must be an int", (polygons, rois, objs, True)),
        (ValueError, r"mask_size must be in \[1, 512\]", (polygons, rois, objs, 0)),
        (ValueError, r"mask_size must be in \[1, 512\]", (polygons, rois, objs, 513)),
    ]
    for error, match, args in cases:
        with pytest.raises(error, match=match):
            op(*args)


@pytest.mark.cuda
def test_mixed_devices_name_the_argument() -> None:
    polygons, rois, objs = _valid()
    with pytest.raises(ValueError, match=r"polygons\.vertices is on cpu but rois are on cuda"):
        mask_targets(polygons, rois.cuda(), objs)
    with pytest.raises(ValueError, match="roi_objects is on cpu"):
        mask_targets(polygons.to("cuda"), rois.cuda(), objs)


def test_extension_checks_indices_itself() -> None:
    """A direct caller of torch.ops.harness.mask_targets gets an error, not an out-of-bounds read,
    on the CPU even with the debug checks off (the CUDA kernel skips bad indices instead)."""
    set_debug(False)
    polygons, rois, _ = _valid()
    args = (polygons.vertices, polygons.poly_offsets, polygons.obj_offsets, rois)
    with pytest.raises(RuntimeError, match=r"roi_objects\[1\] = 7"):
        library().mask_targets(*args, torch.tensor([0, 7]), 28)
    with pytest.raises(RuntimeError, match="poly_offsets must run from 0"):
        library().mask_targets(
            polygons.vertices,
            polygons.poly_offsets + 1,
            polygons.obj_offsets,
            rois,
            torch.tensor([0, 1]),
            28,
        )


_CORRUPTIONS = [
    "short polygon",
    "vertex count",
    "object offsets",
    "roi object",
    "non-finite",
    "rois dtype",
    "roi_objects shape",
    "rois list",
    "mask_size",
    "mask_size float",
]


@st.composite
def _fuzzed_call(draw) -> tuple[Polygons, object, Tensor, object]:
    """A valid call, or one with a single field corrupted (about half of the time)."""
    corruption = draw(st.sampled_from(["none"] * len(_CORRUPTIONS) + _CORRUPTIONS))
    poly_sizes = draw(st.lists(st.integers(3, 6), max_size=4))
    if corruption == "short polygon" and poly_sizes:
        poly_sizes[draw(st.integers(0, len(poly_sizes) - 1))] = draw(st.integers(0, 2))
    poly_offsets = [0]
    for n in poly_sizes:
        poly_offsets.append(poly_offsets[-1] + n)
    num_polys = len(poly_sizes)
    cuts = sorted(draw(st.lists(st.integers(0, num_polys), max_size=3)))
    obj_offsets = [0, *cuts, num_polys]
    if corruption == "object offsets":
        obj_offsets = [0, *draw(st.lists(st.integers(-1, num_polys + 1), max_size=3))]
    num_vertices = poly_offsets[-1]
    if corruption == "vertex count":
        num_vertices = max(num_vertices + draw(st.sampled_from([-1, 1])), 0)
    coords = st.floats(-50, 80, width=32)
    if corruption == "non-finite":
        coords = st.one_of(coords, st.sampled_from([math.nan, math.inf, 2e5, -1e9]))
    vertices = torch.tensor(
        draw(st.lists(coords, min_size=2 * num_vertices, max_size=2 * num_vertices)),
        dtype=torch.float32,
    ).reshape(-1, 2)
    num_rois = draw(st.integers(0, 3))
    rois = torch.tensor(
        draw(st.lists(coords, min_size=4 * num_rois, max_size=4 * num_rois)), dtype=torch.float32
    ).reshape(-1, 4)
    num_objects = len(obj_offsets) - 1
    objects = st.integers(0, max(num_objects - 1, 0))
    if corruption == "roi object" or num_objects == 0:
        objects = st.integers(-2, num_objects + 1)
    roi_objects = torch.tensor(
        draw(st.lists(objects, min_size=num_rois, max_size=num_rois)), dtype=torch.int64
    )
    polygons = Polygons(vertices, torch.tensor(poly_offsets), torch.tensor(obj_offsets))
    mask_size = draw(st.integers(1, 9))
    if corruption == "rois dtype":
        rois = rois.double()
    elif corruption == "roi_objects shape":
        roi_objects = roi_objects[None]
    elif corruption == "rois list":
        rois = rois.tolist()
    elif corruption == "mask_size":
        mask_size = draw(st.sampled_from([-1, 0, 513, 10**6]))
    elif corruption == "mask_size float":
        mask_size = float(mask_size)
    return polygons, rois, roi_objects, mask_size


@settings(max_examples=80, deadline=None)
@given(call=_fuzzed_call())
def test_fuzzed_arguments_raise_or_match_reference(call) -> None:
    """Arbitrary, often malformed input either raises TypeError/ValueError or equals the
    reference: never a crash, never a silent wrong result."""
    try:
        got = mask_targets(*call)
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            mask_targets_reference(*call)
        return
    assert torch.equal(got, mask_targets_reference(*call))
