"""The DALI graph: COCO reader -> decode -> resize -> flip + normalize (images), annotations passed on.

Targets are not transformed in the graph: the iterator (dali_pipeline.loader) applies the same
`harness.data.transforms.make_target` as the PyTorch loader to the reader's annotations, with the
graph's own flip decision, so both loaders agree on targets by construction.
"""

from __future__ import annotations

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import Pipeline

from harness.data.batch import Normalization
from harness.data.transforms import pixel_scale

READER = "coco"
F64 = types.FLOAT64


def _round_half_even(x):
    """Python's round() in DALI arithmetic (DALI has floor but no round)."""
    low = dmath.floor(x)
    frac = x - low
    odd = low - 2.0 * dmath.floor(low * 0.5)
    return low + fn.cast(frac > 0.5, dtype=F64) + fn.cast(frac == 0.5, dtype=F64) * odd


def _resized_extent(shape, min_size: int, max_size: int):
    """(out_h, out_w) float32 DataNodes: `harness.data.transforms.resized_size` in DALI arithmetic,
    float64 and in the same operation order, so both loaders produce the reference's sizes."""
    h = fn.cast(shape[0], dtype=F64)
    w = fn.cast(shape[1], dtype=F64)
    short, long = dmath.min(h, w), dmath.max(h, w)
    capped = fn.cast(long / short * float(min_size) > float(max_size), dtype=F64)
    size = capped * _round_half_even(float(max_size) * short / long) + (1.0 - capped) * min_size
    portrait = fn.cast(w < h, dtype=F64)
    out_h = portrait * dmath.floor(size * h / w) + (1.0 - portrait) * size
    out_w = portrait * size + (1.0 - portrait) * dmath.floor(size * w / h)
    # Whole numbers by now; fn.resize takes its sizes as float32.
    return fn.cast(out_h, dtype=types.FLOAT), fn.cast(out_w, dtype=types.FLOAT)


def coco_pipeline(
    *,
    image_dir: str,
    annotation_file: str,
    batch_size: int,
    num_threads: int,
    decode_device: str,
    device_id: int | None,
    shard_id: int,
    num_shards: int,
    training: bool,
    seed: int,
    shuffle_seed: int,
    min_size: int,
    max_size: int,
    flip_prob: float,
    norm: Normalization,
) -> Pipeline:
    """A built pipeline whose outputs are, per sample:

    images:       float32 [3, h, w] normalized (see Normalization), resized, flipped when `flips` is 1;
                  on the GPU when decode_device is "mixed"
    boxes:        float32 [N, 4] (x, y, x + w, y + h) of the annotation file, original pixels
    category_ids: int32 [N] COCO category ids (no remapping)
    poly_ranges:  int32 [P, 3] (object index, first vertex, end vertex); vertices float32 [V, 2] pixels
    image_ids:    int32 [1]; shapes: int64 [3] (H, W, C) of the file; flips: int32 [] 0 or 1

    training: the whole set is reshuffled each epoch from shuffle_seed (give every rank the same one,
    so that the shards partition each epoch) and flipped with probability flip_prob, drawn from `seed`;
    Otherwise images come in id order, never flipped, and the reader stays on its shard, padded (by
    repeating its last image) to ceil(ceil(N / num_shards) / batch_size) batches per epoch on every
    shard, so that each pass over the shard starts at its first image; callers drop the padding.
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device must be 'cpu' or 'mixed', got {decode_device!r}")
    if decode_device == "mixed" and device_id is None:
        raise ValueError("decode_device='mixed' needs a GPU device_id")
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if decode_device == "mixed" else None,
        seed=seed,
        prefetch_queue_depth=2,
        exec_dynamic=True,  # fresh, reference-counted output buffers: samples may outlive a run
    )
    with pipe:
        order = (
            {"shuffle_after_epoch": True, "shuffle_after_epoch_seed": shuffle_seed}
            if training
            else {"pad_last_batch": True, "stick_to_shard": True}
        )
        jpegs, boxes, cats, polys, verts, ids = fn.readers.coco(
            name=READER,
            file_root=image_dir,
            annotations_file=annotation_file,
            polygon_masks=True,
            ltrb=True,
            ratio=False,
            avoid_class_remapping=True,
            image_ids=True,
            include_iscrowd=False,
            skip_empty=False,
            size_threshold=0.0,
            shard_id=shard_id,
            num_shards=num_shards,
            **order,
        )
        shape = fn.peek_image_shape(jpegs)
        images = fn.decoders.image(
            jpegs, device=decode_device, output_type=types.BGR if norm.bgr255 else types.RGB
        )
        out_h, out_w = _resized_extent(shape, min_size, max_size)
        images = fn.resize(images, resize_x=out_w, resize_y=out_h, antialias=True)
        flip = (
            fn.random.coin_flip(probability=flip_prob, dtype=types.INT32)
            if training
            else fn.constant(idata=0, dtype=types.INT32)
        )
        mean, std = pixel_scale(norm)
        images = fn.crop_mirror_normalize(
            images, mirror=flip, mean=mean, std=std, dtype=types.FLOAT, output_layout="CHW"
        )
        pipe.set_outputs(images, boxes, cats, polys, verts, ids, shape, flip)
    pipe.build()
    return pipe
