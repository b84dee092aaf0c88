"""Annotation parsing: what is an error (naming the file and annotation) and what is a counted skip."""

import json
import shutil

import numpy as np
import pytest

from harness.data.coco import CocoDataError, category_ids, load_coco
from harness.data.synthetic import CATEGORIES
from tests.data.conftest import TRAIN, VAL

SPLIT = "val2017"


def _copy(src, dst, edit=None):
    shutil.copytree(src, dst)
    path = dst / "annotations" / f"instances_{SPLIT}.json"
    if edit is not None:
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return dst


def test_category_ids_are_sorted_coco_ids(tiny_coco):
    ann = tiny_coco / "annotations" / "instances_train2017.json"
    assert category_ids(ann) == sorted(c for c, _ in CATEGORIES)


def test_train_drops_empty_images_val_keeps_them(tiny_coco):
    val = load_coco(tiny_coco, SPLIT, keep_empty_images=True)
    train_view = load_coco(tiny_coco, SPLIT, keep_empty_images=False)
    assert len(val.records) == VAL
    assert len(train_view.records) == VAL - 1
    assert train_view.skipped["images without usable annotations"] == 1
    assert [r.image_id for r in val.records] == sorted(r.image_id for r in val.records)
    assert len(load_coco(tiny_coco, "train2017", keep_empty_images=False).records) == TRAIN - 1


def test_boxes_use_the_plus_one_convention(tiny_coco):
    doc = json.loads((tiny_coco / "annotations" / f"instances_{SPLIT}.json").read_text())
    ann = doc["annotations"][0]
    rec = next(
        r
        for r in load_coco(tiny_coco, SPLIT, keep_empty_images=True).records
        if r.image_id == ann["image_id"]
    )
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose(rec.boxes[0], [x, y, x + w - 1, y + h - 1], atol=1e-4)


def test_missing_directory_and_annotation_file(tmp_path, tiny_coco):
    with pytest.raises(CocoDataError, match="dataset directory not found"):
        load_coco(tmp_path / "nowhere", SPLIT, keep_empty_images=True)
    root = _copy(tiny_coco, tmp_path / "c")
    (root / "annotations" / f"instances_{SPLIT}.json").unlink()
    with pytest.raises(CocoDataError, match=f"instances_{SPLIT}.json"):
        load_coco(root, SPLIT, keep_empty_images=True)
    shutil.rmtree(root / SPLIT)
    with pytest.raises(CocoDataError, match="image directory not found"):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_unparsable_or_incomplete_json(tmp_path, tiny_coco):
    root = _copy(tiny_coco, tmp_path / "c")
    path = root / "annotations" / f"instances_{SPLIT}.json"
    path.write_text('{"images": [')
    with pytest.raises(CocoDataError, match="not valid JSON"):
        load_coco(root, SPLIT, keep_empty_images=True)
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(CocoDataError, match="'categories'"):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_annotation_of_an_unlisted_image_names_the_annotation(tmp_path, tiny_coco):
    def edit(doc):
        doc["annotations"][2]["image_id"] = 999999

    root = _copy(tiny_coco, tmp_path / "c", edit)
    ann_id = json.loads((tiny_coco / "annotations" / f"instances_{SPLIT}.json").read_text())[
        "annotations"
    ][2]["id"]
    with pytest.raises(CocoDataError, match=f"annotation {ann_id} points at image 999999"):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_unknown_category_names_the_annotation(tmp_path, tiny_coco):
    def edit(doc):
        doc["annotations"][0]["category_id"] = 4242

    root = _copy(tiny_coco, tmp_path / "c", edit)
    with pytest.raises(CocoDataError, match="unknown category 4242"):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_missing_image_file_names_the_file(tmp_path, tiny_coco):
    root = _copy(tiny_coco, tmp_path / "c")
    victim = sorted((root / SPLIT).iterdir())[3]
    victim.unlink()
    with pytest.raises(CocoDataError, match=victim.name):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_short_polygons_zero_area_boxes_and_crowds_are_counted_skips(tmp_path, tiny_coco):
    def edit(doc):
        anns = doc["annotations"]
        anns[0]["segmentation"].append([1.0, 2.0, 3.0, 4.0])  # 2 points: dropped, object kept
        anns[1]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # no valid polygon left: object dropped
        anns[2]["bbox"] = [5.0, 5.0, 0.0, 10.0]  # zero width
        anns[3]["iscrowd"] = 1
        anns[4]["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]  # odd coordinate count

    root = _copy(tiny_coco, tmp_path / "c", edit)
    doc = json.loads((root / "annotations" / f"instances_{SPLIT}.json").read_text())
    coco = load_coco(root, SPLIT, keep_empty_images=True)
    assert coco.skipped["polygons with fewer than 3 points"] == 3
    assert coco.skipped["objects with no valid polygon"] == 2
    assert coco.skipped["objects with an empty box"] == 1
    assert coco.skipped["crowd annotations"] == 1
    kept = {a for r in coco.records for a in r.annotation_ids}
    ids = [a["id"] for a in doc["annotations"]]
    assert ids[0] in kept and not kept & set(ids[1:5])
    assert len(kept) == len(ids) - 4
    first = next(r for r in coco.records if ids[0] in r.annotation_ids)
    assert all(len(p) >= 6 for polys in first.polygons for p in polys)


@pytest.mark.parametrize("how", ["same id", "same file"])
def test_an_image_listed_twice_is_refused(tmp_path, tiny_coco, how):
    def edit(doc):
        again = dict(doc["images"][3])
        if how == "same file":
            again["id"] = 777777
        doc["images"].append(again)

    root = _copy(tiny_coco, tmp_path / "c", edit)
    image = json.loads((tiny_coco / "annotations" / f"instances_{SPLIT}.json").read_text())[
        "images"
    ][3]
    expected = (
        f"image id {image['id']} is listed twice"
        if how == "same id"
        else f"file {image['file_name']} is listed twice, as images {image['id']} and 777777"
    )
    with pytest.raises(CocoDataError, match=expected):
        load_coco(root, SPLIT, keep_empty_images=True)


@pytest.mark.parametrize(
    "bbox", [[1, 2, "ten", 4], [1, 2, None, 4], [1, 2, 3], "1 2 3 4", [1, 2, True, 4]]
)
def test_a_bbox_that_is_not_four_numbers_names_the_annotation(tmp_path, tiny_coco, bbox):
    def edit(doc):
        doc["annotations"][1]["bbox"] = bbox

    root = _copy(tiny_coco, tmp_path / "c", edit)
    ann = json.loads((tiny_coco / "annotations" / f"instances_{SPLIT}.json").read_text())[
        "annotations"
    ][1]
    with pytest.raises(
        CocoDataError, match=f"annotation {ann['id']} \\(image {ann['image_id']}\\): bbox must be"
    ):
        load_coco(root, SPLIT, keep_empty_images=True)


def test_a_non_finite_bbox_value_names_the_annotation(tmp_path, tiny_coco):
    root = _copy(tiny_coco, tmp_path / "c")
    path = root / "annotations" / f"instances_{SPLIT}.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["bbox"][1] = float("nan")
    path.write_text(json.dumps(doc))  # json writes NaN, and json.load reads it back
    with pytest.raises(CocoDataError, match=f"annotation {doc['annotations'][0]['id']} "):
        load_coco(root, SPLIT, keep_empty_images=True)
