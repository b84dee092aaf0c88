"""Both loaders against the batch contract and against each other (DALI runs on the CPU here)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from PIL import Image

from harness.config import Config, DataConfig, ModelConfig, SolverConfig
from harness.data import (
    CocoDataError,
    CorruptImageError,
    build_train_loader,
    build_val_loader,
    resolve_loader,
    val_annotation_file,
)
from harness.data.batch import Batch, Normalization
from harness.data.coco import load_coco
from harness.data.transforms import resized_size
from tests.data.conftest import TRAIN, VAL

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia-dali is not installed")
LOADERS = ["pytorch", pytest.param("dali", marks=needs_dali)]
NORM = Normalization.caffe2()


def _cfg(root, loader="pytorch", ims_per_batch=2, num_classes=5, **data) -> Config:
    fields = {"min_size": 80, "max_size": 120, "num_workers": 0, "loader": loader} | data
    return Config(
        model=ModelConfig(num_classes=num_classes),  # the synthetic set's 4 categories + 1
        data=DataConfig(root=str(root), **fields),
        solver=SolverConfig(ims_per_batch=ims_per_batch),
    )


def _samples(batches):
    """{image id: (image [3, h, w] unpadded, target)} over some batches."""
    out = {}
    for batch in batches:
        for image, t in zip(batch.images, batch.targets, strict=True):
            out[t.image_id] = (image[:, : t.image_size[0], : t.image_size[1]], t)
    return out


@needs_dali
@pytest.mark.parametrize(("flip_prob", "ims_per_batch"), [(0.0, 1), (1.0, 1), (0.5, 4)])
def test_loaders_agree_on_batches_targets_and_pixels(tiny_coco, flip_prob, ims_per_batch):
    got, order, shapes = {}, {}, {}
    for loader in ("pytorch", "dali"):
        cfg = _cfg(tiny_coco, loader, ims_per_batch=ims_per_batch, flip_prob=flip_prob)
        train = build_train_loader(cfg, NORM, rank=0, world_size=1, seed=3)
        batches = [batch for _ in range(3) for batch in train]
        # Both read the batches of the same sampler: same images, same order, same flips.
        order[loader] = [[(t.image_id, t.flipped) for t in b.targets] for b in batches]
        shapes[loader] = [b.images.shape for b in batches]
        got[loader] = _samples(batches)
    assert order["pytorch"] == order["dali"]
    assert shapes["pytorch"] == shapes["dali"]
    torch_samples, dali_samples = got["pytorch"], got["dali"]
    assert len(torch_samples) >= TRAIN - 1 - 4
    if flip_prob == 0.5:
        assert len({t.flipped for _, t in torch_samples.values()}) == 2
    for image_id in torch_samples:
        image, t = torch_samples[image_id]
        dali_image, d = dali_samples[image_id]
        assert t.flipped == d.flipped
        assert (t.image_size, t.orig_size) == (d.image_size, d.orig_size)
        torch.testing.assert_close(t.boxes, d.boxes, atol=1e-3, rtol=0)
        assert torch.equal(t.labels, d.labels)
        assert torch.equal(t.polygons.poly_offsets, d.polygons.poly_offsets)
        assert torch.equal(t.polygons.obj_offsets, d.polygons.obj_offsets)
        torch.testing.assert_close(t.polygons.vertices, d.polygons.vertices, atol=1e-3, rtol=0)
        # Same libjpeg decode and bilinear antialiased resize; uint8 rounding may differ by 1 level.
        diff = (image - dali_image).abs()
        assert diff.max() <= 2.0 and diff.mean() < 0.3, (image_id, diff.max(), diff.mean())


@needs_dali
def test_dali_batches_stay_intact_while_later_ones_are_read(tiny_coco):
    """DALI's batches reach the trainer without a copy; later pipeline runs must not overwrite them."""
    train = build_train_loader(_cfg(tiny_coco, "dali", ims_per_batch=2), NORM, 0, 1, seed=2)
    kept, copies = [], []
    for _ in range(3):
        for batch in train:
            kept.append(batch.images)
            copies.append(batch.images.clone())
    assert all(torch.equal(a, b) for a, b in zip(kept, copies, strict=True))


@needs_dali
def test_flipped_image_matches_its_flipped_targets(tiny_coco):
    plain = _samples(build_train_loader(_cfg(tiny_coco, "dali", 1, flip_prob=0.0), NORM, 0, 1, 0))
    flipped = _samples(build_train_loader(_cfg(tiny_coco, "dali", 1, flip_prob=1.0), NORM, 0, 1, 0))
    for image_id, (image, t) in plain.items():
        image_f, t_f = flipped[image_id]
        torch.testing.assert_close(image_f, image.flip(-1))
        width = t.image_size[1]
        torch.testing.assert_close(t_f.boxes[:, 0], width - 1 - t.boxes[:, 2])
        torch.testing.assert_close(
            t_f.polygons.vertices[:, 0], width - 1 - t.polygons.vertices[:, 0]
        )
        torch.testing.assert_close(t_f.polygons.vertices[:, 1], t.polygons.vertices[:, 1])


def _check_batch(batch: Batch, size: int, num_classes: int, grouped: bool) -> None:
    assert isinstance(batch, Batch) and len(batch.targets) == size
    n, c, h, w = batch.images.shape
    assert (n, c) == (size, 3) and h % 32 == 0 and w % 32 == 0
    assert batch.images.dtype == torch.float32
    for image, t in zip(batch.images, batch.targets, strict=True):
        ih, iw = t.image_size
        assert ih <= h and iw <= w and min(ih, iw) == 80
        assert image[:, ih:].abs().sum() == 0 and image[:, :, iw:].abs().sum() == 0
        assert t.boxes.shape == (t.labels.numel(), 4) and t.polygons.num_objects == t.labels.numel()
        assert (t.boxes[:, 2:] > t.boxes[:, :2]).all()
        assert (
            (t.boxes >= 0).all()
            and (t.boxes[:, 2] <= iw - 1).all()
            and (t.boxes[:, 3] <= ih - 1).all()
        )
        assert ((t.labels >= 1) & (t.labels <= num_classes)).all()
    if grouped:
        assert len({t.image_size[1] > t.image_size[0] for t in batch.targets}) == 1


@pytest.mark.parametrize("loader", LOADERS)
def test_train_batches_follow_the_contract(tiny_coco, loader):
    train = build_train_loader(_cfg(tiny_coco, loader, ims_per_batch=4), NORM, 0, 2, seed=1)
    assert len(train) == ((TRAIN - 1) // 2) // 2 - 1  # one batch of slack for the grouping
    for epoch in range(2):
        train.set_epoch(epoch)
        batches = list(train)
        assert len(batches) == len(train)
        for batch in batches:
            _check_batch(batch, 2, 4, grouped=True)


@pytest.mark.parametrize("loader", LOADERS)
def test_train_order_is_deterministic_by_seed_and_epoch(tiny_coco, loader):
    def ids(seed, epoch):
        train = build_train_loader(_cfg(tiny_coco, loader, ims_per_batch=1), NORM, 0, 1, seed)
        train.set_epoch(epoch)
        return [(t.image_id, t.flipped) for b in train for t in b.targets]

    first = ids(5, 0)
    assert first == ids(5, 0)
    assert first != ids(6, 0)
    assert ids(5, 2) == ids(5, 2) != first


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_skips_the_consumed_part_of_the_epoch(tiny_coco, loader):
    def run(start):
        cfg = _cfg(tiny_coco, loader, ims_per_batch=2)
        train = build_train_loader(cfg, NORM, rank=0, world_size=1, seed=4)
        train.set_epoch(1, start=start)
        return [[(t.image_id, t.flipped) for t in b.targets] for b in train], train

    full, train = run(0)
    assert len(full) == len(train) == (TRAIN - 1) // 2 - 1
    assert train.num_samples == TRAIN - 1
    resumed, _ = run(2 * 2)
    assert resumed == full[2:]
    with pytest.raises(ValueError, match="whole number of global batches"):
        train.set_epoch(1, start=3)


@pytest.mark.parametrize("loader", LOADERS)
def test_ranks_read_disjoint_shards_of_an_epoch(tiny_coco, loader):
    seen = []
    for rank in range(2):
        cfg = _cfg(tiny_coco, loader, ims_per_batch=2, aspect_ratio_grouping=False)
        train = build_train_loader(cfg, NORM, rank, 2, seed=9)
        seen += [t.image_id for b in train for t in b.targets]
    assert len(seen) == len(set(seen)) == 2 * ((TRAIN - 1) // 2)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_val_reads_every_image_once_in_id_order(tiny_coco, loader, world_size):
    ids = []
    for rank in range(world_size):
        val = build_val_loader(
            _cfg(tiny_coco, loader, ims_per_batch=world_size), NORM, rank, world_size
        )
        batches = list(val)
        assert len(batches) == len(val)
        # Later passes (DALI keeps one reader for all) and a pass abandoned half-way change nothing.
        next(iter(val))
        first_pass = [t.image_id for b in batches for t in b.targets]
        for _ in range(2):
            assert [t.image_id for b in val for t in b.targets] == first_pass
        for batch in batches:
            _check_batch(batch, len(batch.targets), 4, grouped=False)
            assert not any(t.flipped for t in batch.targets)
        ids += [t.image_id for b in batches for t in b.targets]
    expected = [r.image_id for r in load_coco(tiny_coco, "val2017", keep_empty_images=True).records]
    assert ids == expected and len(ids) == VAL
    assert val.num_samples == VAL


@needs_dali
def test_dali_val_batches_equal_pytorch_val_batches(tiny_coco):
    torch_val = list(
        build_val_loader(_cfg(tiny_coco, "pytorch"), Normalization.torchvision(), 0, 1)
    )
    dali_val = list(build_val_loader(_cfg(tiny_coco, "dali"), Normalization.torchvision(), 0, 1))
    assert len(torch_val) == len(dali_val) == -(-VAL // 2)
    for a, b in zip(torch_val, dali_val, strict=True):
        assert a.images.shape == b.images.shape
        # One uint8 level is 1 / 255 / 0.224 in torchvision units.
        assert (a.images - b.images).abs().max() <= 2 / 255 / 0.224


def test_loader_selection_and_bad_settings(tiny_coco):
    assert resolve_loader(DataConfig(loader="auto")) == ("dali" if HAVE_DALI else "pytorch")
    with pytest.raises(ValueError, match="world size"):
        build_train_loader(_cfg(tiny_coco, ims_per_batch=3), NORM, 0, 2, 0)
    with pytest.raises(CocoDataError, match="do not fill one batch of 8 per rank"):
        build_train_loader(_cfg(tiny_coco, ims_per_batch=8), NORM, 0, 1, 0)
    assert val_annotation_file(_cfg(tiny_coco)).name == "instances_val2017.json"


@needs_dali
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_mixed_decode_without_gpu_is_an_error(tiny_coco):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        build_train_loader(_cfg(tiny_coco, "dali", decode_device="mixed"), NORM, 0, 1, 0)


@needs_dali
@pytest.mark.cuda
def test_mixed_decode_matches_cpu_decode(tiny_coco):
    cpu = _samples(build_val_loader(_cfg(tiny_coco, "dali", decode_device="cpu"), NORM, 0, 1))
    gpu = _samples(build_val_loader(_cfg(tiny_coco, "dali", decode_device="mixed"), NORM, 0, 1))
    assert sorted(cpu) == sorted(gpu)
    for image_id, (image, t) in cpu.items():
        gpu_image, g = gpu[image_id]
        assert gpu_image.is_cuda
        torch.testing.assert_close(t.boxes, g.boxes)
        # nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling by a few levels.
        assert (image - gpu_image.cpu()).abs().mean() < 3.0


@pytest.fixture
def broken_coco(tmp_path, tiny_coco):
    return shutil.copytree(tiny_coco, tmp_path / "broken")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg_is_an_error_naming_the_file(broken_coco, loader, damage):
    victim = sorted((broken_coco / "val2017").iterdir())[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 40)
    with pytest.raises(CocoDataError, match=victim.name):
        list(build_val_loader(_cfg(broken_coco, loader, val_ims_per_batch=1), NORM, 0, 1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loader", LOADERS)
def test_image_size_disagreeing_with_annotations_is_an_error(broken_coco, loader):
    records = load_coco(broken_coco, "val2017", keep_empty_images=True).records
    first = records[0]
    other = next(r for r in records if (r.height, r.width) != (first.height, first.width))
    victim = broken_coco / "val2017" / first.file_name
    shutil.copy(broken_coco / "val2017" / other.file_name, victim)
    with pytest.raises(CocoDataError, match=f"{victim.name} is {other.width}x{other.height}"):
        list(build_val_loader(_cfg(broken_coco, loader, val_ims_per_batch=1), NORM, 0, 1))


SIZES = [(37, 91), (91, 37), (50, 50), (33, 100), (100, 33), (48, 64), (61, 59), (17, 240)]


@needs_dali
def test_dali_resizes_to_the_reference_size_for_odd_shapes(tmp_path):
    """Both branches of the size rule (longer side capped or not) in DALI's float32 arithmetic."""
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images = []
    for i, (h, w) in enumerate(SIZES, start=1):
        Image.new("RGB", (w, h), (i * 20, 100, 50)).save(tmp_path / "val2017" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
    doc = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    got = {}
    for loader in ("pytorch", "dali"):
        cfg = _cfg(tmp_path, loader, num_classes=2, val_ims_per_batch=3)
        got[loader] = [t.image_size for b in build_val_loader(cfg, NORM, 0, 1) for t in b.targets]
    expected = [resized_size(h, w, 80, 120) for h, w in SIZES]
    assert got["dali"] == got["pytorch"] == expected
    # Capped: shorter side round(120 * 37 / 91) = 49; for 17 x 240 it is round(8.5) = 8 (half to
    # even, as Python rounds in the reference), longer side int(8 * 240 / 17) = 112.
    assert expected[0] == (49, 120) and expected[-1] == (8, 112)


def _recategorize(root, categories, remap):
    """Rewrite both splits' categories to `categories` (ids) and annotation ids through `remap`."""
    for split in ("train2017", "val2017"):
        path = root / "annotations" / f"instances_{split}.json"
        doc = json.loads(path.read_text())
        doc["categories"] = [{"id": c, "name": f"c{c}"} for c in categories]
        for ann in doc["annotations"]:
            ann["category_id"] = remap.get(ann["category_id"], ann["category_id"])
        path.write_text(json.dumps(doc))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(
    ("categories", "remap", "count"),
    [
        ((1, 5, 90), {2: 1, 7: 90, 11: 90}, 3),  # non-contiguous ids, fewer than num_classes - 1
        ((2, 5, 7, 11, 12, 13), {}, 6),  # more categories than num_classes - 1
    ],
)
def test_num_classes_must_match_the_dataset(broken_coco, loader, categories, remap, count):
    _recategorize(broken_coco, categories, remap)
    cfg = _cfg(broken_coco, loader, num_classes=5)
    message = f"{count} categories \\+ background = {count + 1} classes, but model.num_classes=5"
    with pytest.raises(CocoDataError, match=message):
        build_train_loader(cfg, NORM, 0, 1, 0)
    with pytest.raises(CocoDataError, match=message):
        build_val_loader(cfg, NORM, 0, 1)
    # The matching count is accepted, whatever the ids.
    build_val_loader(_cfg(broken_coco, loader, num_classes=count + 1), NORM, 0, 1)


def _exif_rotated_set(root, sizes):
    """A val split of JPEGs whose EXIF says "rotate 90° clockwise" (orientation 6); the annotations
    give the stored size, as COCO's do."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    images, anns = [], []
    for i, (h, w) in enumerate(sizes, start=1):
        # A left-to-right ramp with a marked corner: any rotation or mirroring changes the pixels.
        pixels = torch.zeros(h, w, 3, dtype=torch.uint8)
        pixels[..., 0] = torch.linspace(0, 250, w, dtype=torch.float32).to(torch.uint8)
        pixels[: h // 4, : w // 4, 1] = 255
        Image.fromarray(pixels.numpy()).save(
            root / "val2017" / f"{i}.jpg", quality=95, exif=exif.tobytes()
        )
        images.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
        poly = [2.0, 2.0, w / 2, 2.0, w / 2, h / 2, 2.0, h / 2]
        box = [2.0, 2.0, w / 2 - 2, h / 2 - 2]
        anns.append(
            {"id": i, "image_id": i, "category_id": 1, "bbox": box, "segmentation": [poly]}
            | {"iscrowd": 0, "area": box[2] * box[3]}
        )
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return root


@needs_dali
def test_exif_orientation_is_ignored_by_both_loaders(tmp_path):
    root = _exif_rotated_set(tmp_path / "exif", [(96, 96), (80, 120)])
    got = {}
    for loader in ("pytorch", "dali"):
        cfg = _cfg(root, loader, num_classes=2, val_ims_per_batch=1)
        got[loader] = _samples(build_val_loader(cfg, Normalization.torchvision(), 0, 1))
    for image_id, (image, t) in got["pytorch"].items():
        dali_image, d = got["dali"][image_id]
        assert t.orig_size == d.orig_size and t.image_size == d.image_size
        torch.testing.assert_close(t.boxes, d.boxes)
        assert image.shape == dali_image.shape
        # One uint8 level is 1 / 255 / 0.224 in torchvision units.
        assert (image - dali_image).abs().max() <= 2 / 255 / 0.224, image_id
        # The stored pixels: red grows left to right, the green corner is top-left.
        red = image[0].mean(0)
        assert red[-1] > red[0] and image[1, 0, 0] > image[1, -1, -1]


def _corrupt_error(root, loader: str, train: bool) -> CorruptImageError:
    cfg = _cfg(root, loader, ims_per_batch=1, num_workers=1, val_ims_per_batch=1)
    batches = (
        build_train_loader(cfg, NORM, 0, 1, seed=0) if train else build_val_loader(cfg, NORM, 0, 1)
    )
    with pytest.raises(CorruptImageError) as caught:
        for _ in range(3):  # an epoch may leave one image out (grouping slack); not three
            for _ in batches:
                pass
    return caught.value


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_corrupt_image_is_one_error_naming_the_file_in_both_loaders(broken_coco, damage):
    victims = []
    for split in ("train2017", "val2017"):
        victim = sorted((broken_coco / split).iterdir())[4]
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
        victims.append(victim)
    for train, victim in zip((True, False), victims, strict=True):
        loaders = ["pytorch", "dali"] if HAVE_DALI else ["pytorch"]
        errors = [_corrupt_error(broken_coco, loader, train) for loader in loaders]
        for error in errors:
            assert error.path == str(victim)
            assert str(error) == str(errors[0])
            assert str(error).startswith(f"corrupt image {victim}: ") and "\n" not in str(error)
