"""The DALI graph: encoded files from the host -> decode -> resize -> flip + normalize + pad.

The host (dali_pipeline.loader) chooses the images of every batch with the PyTorch loader's sampler,
computes their sizes with `harness.data.transforms.resized_size` and makes their targets with the
same transforms, so both loaders agree on order, flips, sizes and targets by construction; the graph
only does the pixel work, and hands back each batch as one dense, padded tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import Pipeline

from harness.data.batch import Normalization
from harness.data.transforms import pixel_scale

# One batch as the host sends it, one list entry per image:
#   files:  uint8 [bytes] the encoded image file
#   sizes:  float32 [2] (height, width) to resize to
#   canvas: float32 [2] (height, width) of the padded batch, the same for every image of a batch
#   flips:  int32 [] 1 to mirror horizontally after resizing, else 0
HostBatch = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]


def coco_pipeline(
    *,
    source: Callable[[], HostBatch],
    batch_size: int,
    num_threads: int,
    decode_device: str,
    device_id: int | None,
    norm: Normalization,
) -> Pipeline:
    """A built pipeline; each run takes the next batch of `source` (at most batch_size images) and
    returns

    images: float32 [B, 3, canvas h, canvas w], one dense tensor: normalized (see Normalization),
            resized, flipped, zero padded at the bottom and right; on the GPU when decode_device is
            "mixed"
    shapes: int64 [3] per image: (H, W, C) of the file, for checking it against the annotations
    """
    if decode_device not in ("cpu", "mixed"):
        raise ValueError(f"decode_device must be 'cpu' or 'mixed', got {decode_device!r}")
    if decode_device == "mixed" and device_id is None:
        raise ValueError("decode_device='mixed' needs a GPU device_id")
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if decode_device == "mixed" else None,
        prefetch_queue_depth=2,
        exec_dynamic=True,  # fresh, reference-counted output buffers: batches may outlive a run
    )
    with pipe:
        files, sizes, canvas, flips = fn.external_source(
            source=source,
            num_outputs=4,
            batch=True,
            dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32],
        )
        # COCO annotations refer to the stored pixels: never rotate by EXIF orientation (DALI's
        # default does, the PyTorch loader and the reference's PIL reader do not).
        shapes = fn.peek_image_shape(files, adjust_orientation=False)
        # Decode to RGB and convert: the CPU decoder's own BGR output costs ~2.5 ms more per
        # 640x480 image than the conversion op (measured, DALI 2.4).
        images = fn.decoders.image(
            files, device=decode_device, output_type=types.RGB, adjust_orientation=False
        )
        if norm.bgr255:
            images = fn.color_space_conversion(images, image_type=types.RGB, output_type=types.BGR)
        images = fn.resize(images, size=sizes, antialias=True)
        mean, std = pixel_scale(norm)
        # One pass does the flip, the normalization, HWC -> CHW and the padding: the window starts
        # at the image's left edge, or for a mirrored image ends at its right edge, so that after
        # mirroring the padding is on the right either way.
        images = fn.crop_mirror_normalize(
            images,
            crop_h=canvas[0],
            crop_w=canvas[1],
            crop_pos_x=fn.cast(flips, dtype=types.FLOAT),
            crop_pos_y=0.0,
            out_of_bounds_policy="pad",
            fill_values=0.0,
            mirror=flips,
            mean=mean,
            std=std,
            dtype=types.FLOAT,
            output_layout="CHW",
        )
        pipe.set_outputs(images, shapes)
    pipe.build()
    return pipe
