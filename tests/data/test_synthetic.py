import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools.coco import COCO

from harness.data.batch import Normalization
from harness.data.coco import load_coco
from harness.data.loader import CocoImages
from harness.data.synthetic import (
    CATEGORIES,
    GENERATOR_VERSION,
    MIN_VISIBLE,
    ensure,
    generate,
    main,
)
from tests.data.conftest import TRAIN, VAL


def test_layout_is_readable_by_pycocotools(tiny_coco):
    for split, count in (("train2017", TRAIN), ("val2017", VAL)):
        coco = COCO(str(tiny_coco / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == count
        assert sorted(coco.getCatIds()) == sorted(c for c, _ in CATEGORIES)
        for img in coco.imgs.values():
            with Image.open(tiny_coco / split / img["file_name"]) as im:
                assert im.format == "JPEG"
                assert im.size == (img["width"], img["height"])


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_generated_category_ids_are_not_contiguous_and_the_loader_maps_them(tiny_coco):
    """The generated set uses all its categories under ids with gaps, as COCO's (1..90 for 80),
    and the loader gives each object the contiguous label of its id: 1 + its rank among the
    sorted ids (0 is background)."""
    doc = json.loads((tiny_coco / "annotations" / "instances_train2017.json").read_text())
    listed = sorted(c["id"] for c in doc["categories"])
    assert sorted({a["category_id"] for a in doc["annotations"]}) == listed
    assert listed != list(range(1, len(listed) + 1)), "the ids must have gaps"
    label_of = {category: rank + 1 for rank, category in enumerate(listed)}
    coco = load_coco(tiny_coco, "train2017", keep_empty_images=False)
    images = CocoImages(coco, 64, 64, Normalization.caffe2())
    seen = set()
    for index, record in enumerate(coco.records):
        _, target = images[(index, False)]
        annotations = [a for a in doc["annotations"] if a["image_id"] == record.image_id]
        assert target.labels.tolist() == [label_of[a["category_id"]] for a in annotations]
        seen.update(target.labels.tolist())
    assert seen == set(range(1, len(listed) + 1))


def test_annotations_are_consistent(tiny_coco):
    coco = COCO(str(tiny_coco / "annotations" / "instances_train2017.json"))
    assert len(coco.anns) > TRAIN
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        (poly,) = ann["segmentation"]
        pts = np.array(poly).reshape(-1, 2)
        assert pts.shape[0] >= 3 and ann["iscrowd"] == 0 and ann["area"] > 0
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        np.testing.assert_allclose(pts.min(0), [x, y], atol=0.02)
        np.testing.assert_allclose(pts.max(0), [x + w, y + h], atol=0.02)
        assert (pts >= 0).all() and (pts <= [img["width"], img["height"]]).all()
        # The polygon's area is what the rasterized mask covers (up to the border pixels).
        mask = coco.annToMask(ann)
        assert abs(int(mask.sum()) - ann["area"]) <= 0.15 * ann["area"] + 2 * (w + h)


def test_some_images_are_empty_and_both_orientations_occur(tiny_coco):
    coco = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
    empty = [i for i in coco.imgs if not coco.getAnnIds(imgIds=[i])]
    assert len(empty) == 1
    shapes = {(img["width"] > img["height"]) for img in coco.imgs.values()}
    assert shapes == {True, False}


def test_same_seed_same_set_other_seed_differs(tmp_path):
    a = generate(tmp_path / "a", train=3, val=1, seed=3, size=48)
    b = generate(tmp_path / "b", train=3, val=1, seed=3, size=48)
    c = generate(tmp_path / "c", train=3, val=1, seed=4, size=48)
    name = "annotations/instances_train2017.json"
    assert (a / name).read_text() == (b / name).read_text()
    assert (a / name).read_text() != (c / name).read_text()
    first = "train2017/000000000001.jpg"
    assert (a / first).read_bytes() == (b / first).read_bytes()


def test_cli_writes_the_requested_counts(tmp_path):
    main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--seed", "0", "--size", "40"])
    doc = json.loads((tmp_path / "annotations/instances_val2017.json").read_text())
    assert [img["id"] for img in doc["images"]] == [3]
    assert len(list((tmp_path / "train2017").glob("*.jpg"))) == 2


def test_dali_coco_reader_reads_the_original_files(tiny_coco):
    fn = pytest.importorskip("nvidia.dali.fn")
    pipeline_def = pytest.importorskip("nvidia.dali").pipeline_def

    @pipeline_def(batch_size=VAL, num_threads=1, device_id=None)
    def read():
        jpegs, _, labels, polys, _ = fn.readers.coco(
            file_root=str(tiny_coco / "val2017"),
            annotations_file=str(tiny_coco / "annotations" / "instances_val2017.json"),
            polygon_masks=True,
            avoid_class_remapping=True,
        )
        return fn.decoders.image(jpegs), labels, polys

    pipe = read()
    pipe.build()
    images, labels, polys = pipe.run()
    coco = COCO(str(tiny_coco / "annotations" / "instances_val2017.json"))
    assert sum(np.asarray(labels[i]).size for i in range(VAL)) == len(coco.anns)
    assert sum(len(np.asarray(polys[i])) for i in range(VAL)) == len(coco.anns)
    assert {int(v) for i in range(VAL) for v in np.asarray(labels[i])} <= {c for c, _ in CATEGORIES}
    assert all(np.asarray(images[i]).shape[2] == 3 for i in range(VAL))


def test_ensure_generates_once_and_redoes_an_incomplete_set(tmp_path):
    out = ensure(tmp_path, train=2, val=1, seed=0, size=40)
    ann = out / "annotations/instances_train2017.json"
    stamp = ann.stat().st_mtime_ns
    assert ensure(tmp_path, train=2, val=1, seed=0, size=40) == out
    assert ann.stat().st_mtime_ns == stamp
    (out / ".synthetic-complete").unlink()  # as if the first run was killed before finishing
    ann.write_text("{")
    ensure(tmp_path, train=2, val=1, seed=0, size=40)
    assert len(json.loads(ann.read_text())["images"]) == 2
    ensure(tmp_path, train=3, val=1, seed=0, size=40)
    assert len(json.loads(ann.read_text())["images"]) == 3


def test_every_object_stays_visible(tmp_path):
    # Redraw each image's polygons in annotation (drawing) order and count what each object still
    # shows. Box IoU alone let a large shape bury a small one (7% of objects were under half visible).
    out = generate(tmp_path, train=60, val=0, seed=1, size=96)
    doc = json.loads((out / "annotations/instances_train2017.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    sizes = {img["id"]: (img["width"], img["height"]) for img in doc["images"]}
    fractions = []
    for image_id, anns in by_image.items():
        owner = Image.new("L", sizes[image_id])
        rasters = []
        for k, ann in enumerate(anns, start=1):
            polygon = [tuple(p) for p in np.reshape(ann["segmentation"][0], (-1, 2)).tolist()]
            ImageDraw.Draw(owner).polygon(polygon, fill=k)
            alone = Image.new("L", sizes[image_id])
            ImageDraw.Draw(alone).polygon(polygon, fill=1)
            rasters.append(np.asarray(alone, dtype=bool))
        shown = np.asarray(owner)
        fractions += [(shown == k)[r].mean() for k, r in enumerate(rasters, start=1)]
    assert len(fractions) > 150
    # Rounding the vertices to 0.01 px moves a few edge pixels: a small tolerance under MIN_VISIBLE.
    assert min(fractions) >= MIN_VISIBLE - 0.05, sorted(fractions)[:5]


def test_ensure_regenerates_a_set_from_an_older_generator(tmp_path):
    out = ensure(tmp_path, train=2, val=1, seed=0, size=40)
    marker = out / ".synthetic-complete"
    params = json.loads(marker.read_text())
    assert params["version"] == GENERATOR_VERSION
    marker.write_text(json.dumps({**params, "version": GENERATOR_VERSION - 1}))
    (out / "annotations/instances_val2017.json").write_text("{")
    ensure(tmp_path, train=2, val=1, seed=0, size=40)
    assert json.loads(marker.read_text())["version"] == GENERATOR_VERSION
    assert len(json.loads((out / "annotations/instances_val2017.json").read_text())["images"]) == 1
