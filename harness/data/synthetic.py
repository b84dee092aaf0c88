"""A synthetic COCO-layout set of shape scenes: the embedded dataset of the CPU demo and of the tests.

`python -m harness.data.synthetic --out DIR --train N --val M --seed S [--size PX]` writes

    DIR/train2017/*.jpg, DIR/val2017/*.jpg, DIR/annotations/instances_{train,val}2017.json

Each image is a noisy linear gradient (random colours and direction) with 0-6 filled shapes of four
classes: ellipse, rotated rectangle, triangle and five-pointed star (concave). Category ids are not
contiguous (CATEGORIES), as in COCO. The longer image side is PX; the shorter is PX or 3/4 PX, in either
orientation, so that aspect-ratio grouping has both kinds of image. Shapes are 20-120 px at PX = 256
(scaled with PX), differ in colour, and overlap: a new shape is rejected when its box overlaps an
earlier one's by IoU > 0.5, or when it would leave an earlier object with less than MIN_VISIBLE of
its pixels in view, so every annotated object can be seen.

Occlusion rule: shapes are drawn in annotation order, later ones on top, and every annotation keeps its
object's full shape (polygon, box and area of the whole shape, not of its visible part). Images whose
index is 12 modulo 25 have no objects. Everything is a function of the seed.

`ensure(DIR)` (what the CLI calls) generates the set only when DIR does not already hold a complete
one with the same parameters: the main job calls it on every start.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES: tuple[tuple[int, str], ...] = (
    (2, "ellipse"),
    (5, "rectangle"),
    (7, "triangle"),
    (11, "star"),
)
MAX_OBJECTS = 6
EMPTY_EVERY, EMPTY_AT = 25, 12
JPEG_QUALITY = 90
MIN_VISIBLE = 0.5  # the least fraction of an object's pixels that later shapes may leave uncovered
# Part of what ensure() compares: a set written by an older generator is regenerated.
GENERATOR_VERSION = 2


def _shape_polygon(kind: str, rng: np.random.Generator, size: float) -> np.ndarray:
    """Vertices [V, 2] of a shape of extent about `size`, centred on the origin, randomly rotated."""
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "ellipse":
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ratio = rng.uniform(0.5, 1.0)
        pts = np.stack([np.cos(t) * size / 2, np.sin(t) * size * ratio / 2], 1)
    elif kind == "rectangle":
        w, h = size / 2, size * rng.uniform(0.3, 1.0) / 2
        pts = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind == "triangle":
        t = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.4, 0.4, 3)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * size / 2
    else:
        t = np.arange(10) * math.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, size / 2, size * rng.uniform(0.18, 0.28))
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], 1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T


def _background(rng: np.random.Generator, height: int, width: int, noise: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3]: a linear gradient between two random colours plus Gaussian noise, cut at a
    random offset from `noise` (float32 [>= 2H, >= 2W, 3], sigma 1, drawn once per split: drawing
    fresh noise for every image was most of the generation time)."""
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys = np.arange(height, dtype=np.float32)[:, None] * math.sin(angle)
    t = ys + np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    oy, ox = (
        int(rng.integers(noise.shape[0] - height + 1)),
        int(rng.integers(noise.shape[1] - width + 1)),
    )
    img = noise[oy : oy + height, ox : ox + width] * np.float32(12.0)
    img += c0
    img += (c1 - c0) * t[..., None]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _scene(
    rng: np.random.Generator, height: int, width: int, px: int, empty: bool, noise: np.ndarray
) -> tuple[Image.Image, list[tuple[int, np.ndarray]]]:
    """One image and its objects as (category id, vertices [V, 2] in pixels), in drawing order."""
    img = Image.fromarray(_background(rng, height, width, noise))
    draw = ImageDraw.Draw(img)
    objects: list[tuple[int, np.ndarray]] = []
    boxes: list[np.ndarray] = []
    owner = np.zeros((height, width), np.uint8)  # which object (1-based) each pixel shows; 0: none
    areas: list[int] = []  # each object's whole rasterized area, in pixels
    count = 0 if empty else int(rng.integers(1, MAX_OBJECTS + 1))
    lo, hi = 20 * px / 256, min(120 * px / 256, 0.9 * min(height, width))
    for _ in range(count * 4):
        if len(objects) == count:
            break
        cat_id, kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        pts = _shape_polygon(kind, rng, rng.uniform(lo, hi))
        extent_min, extent_max = pts.min(0), pts.max(0)
        centre = rng.uniform(-extent_min, [width, height] - extent_max)
        pts = pts + centre
        box = np.concatenate([pts.min(0), pts.max(0)])
        if any(_box_iou(box, other) > 0.5 for other in boxes):
            continue
        polygon = [tuple(p) for p in pts.tolist()]
        raster = Image.new("L", (width, height))
        ImageDraw.Draw(raster).polygon(polygon, fill=1)
        covered = np.asarray(raster, dtype=bool)
        left = np.bincount(owner[~covered], minlength=len(objects) + 1)[1:]
        if not covered.any() or np.any(left < MIN_VISIBLE * np.asarray(areas, dtype=np.float64)):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(polygon, fill=colour)
        owner[covered] = len(objects) + 1
        objects.append((cat_id, pts))
        boxes.append(box)
        areas.append(int(covered.sum()))
    return img, objects


def _annotation(ann_id: int, image_id: int, cat_id: int, pts: np.ndarray) -> dict:
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    x1, y1 = float(x.min()), float(y.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "segmentation": [[round(float(v), 2) for v in pts.reshape(-1)]],
        "bbox": [
            round(x1, 2),
            round(y1, 2),
            round(float(x.max()) - x1, 2),
            round(float(y.max()) - y1, 2),
        ],
        "area": round(area, 2),
        "iscrowd": 0,
    }


def write_split(
    out: Path, split: str, count: int, seed: int, px: int, first_image_id: int, first_ann_id: int
) -> int:
    """Write `count` images of `split` and their annotation file; returns the next free annotation id."""
    if px < 32:
        raise ValueError(f"--size must be at least 32 px, got {px}")
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, sum(split.encode())])
    noise = rng.standard_normal((2 * px, 2 * px, 3), dtype=np.float32)
    images, annotations = [], []
    ann_id = first_ann_id
    for i in range(count):
        short = px if rng.random() < 0.3 else (3 * px) // 4
        height, width = (short, px) if rng.random() < 0.5 else (px, short)
        image_id = first_image_id + i
        file_name = f"{image_id:012d}.jpg"
        img, objects = _scene(rng, height, width, px, i % EMPTY_EVERY == EMPTY_AT, noise)
        img.save(image_dir / file_name, quality=JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for cat_id, pts in objects:
            annotations.append(_annotation(ann_id, image_id, cat_id, pts))
            ann_id += 1
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CATEGORIES]
    doc = {
        "info": {"description": f"harness synthetic shapes, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return ann_id


def generate(out: str | Path, train: int, val: int, seed: int, size: int = 256) -> Path:
    """Write the whole set (train2017 and val2017) under `out`; returns `out` as a Path.

    Image ids are 1..train for train2017 and train+1..train+val for val2017 (unique across splits).
    """
    if train < 0 or val < 0:
        raise ValueError(f"image counts must be >= 0, got train={train}, val={val}")
    out = Path(out)
    next_ann = write_split(out, "train2017", train, seed, size, 1, 1)
    write_split(out, "val2017", val, seed, size, train + 1, next_ann)
    return out


def ensure(
    out: str | Path, train: int = 800, val: int = 100, seed: int = 0, size: int = 256
) -> Path:
    """The set under `out`, generated unless a complete one with the same parameters is there.

    A marker file written last records the parameters, so an interrupted generation is redone.
    """
    out = Path(out)
    marker = out / ".synthetic-complete"
    params = json.dumps(
        {"train": train, "val": val, "seed": seed, "size": size, "version": GENERATOR_VERSION}
    )
    if marker.is_file() and marker.read_text() == params:
        return out
    marker.unlink(missing_ok=True)
    generate(out, train, val, seed, size)
    marker.write_text(params)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (COCO layout)")
    parser.add_argument("--train", type=int, default=800, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="longer image side in pixels")
    args = parser.parse_args(argv)
    out = ensure(args.out, args.train, args.val, args.seed, args.size)
    print(f"wrote {args.train} train + {args.val} val images to {out}")


if __name__ == "__main__":
    main()
