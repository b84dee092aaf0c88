"""The batch structure every loader produces and the model consumes.

Coordinates are pixels of the resized image (before padding), boxes in (x1, y1, x2, y2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Polygons:
    """All polygons of some objects, flattened so that mask targets run batched.

    vertices:     Tensor[V, 2] float32, (x, y) in resized-image pixels
    poly_offsets: Tensor[P + 1] int64; polygon p is vertices[poly_offsets[p]:poly_offsets[p + 1]]
    obj_offsets:  Tensor[N + 1] int64; object n owns polygons obj_offsets[n]:obj_offsets[n + 1]
    """

    vertices: Tensor
    poly_offsets: Tensor
    obj_offsets: Tensor

    @property
    def num_objects(self) -> int:
        return self.obj_offsets.numel() - 1

    @staticmethod
    def from_lists(objects: list[list[list[float]]]) -> Polygons:
        """From COCO-style per-object lists of flat [x0, y0, x1, y1, ...] polygons."""
        verts: list[Tensor] = []
        poly_offsets = [0]
        obj_offsets = [0]
        for polys in objects:
            for poly in polys:
                v = torch.as_tensor(poly, dtype=torch.float32).reshape(-1, 2)
                verts.append(v)
                poly_offsets.append(poly_offsets[-1] + v.shape[0])
            obj_offsets.append(obj_offsets[-1] + len(polys))
        vertices = torch.cat(verts) if verts else torch.zeros(0, 2)
        return Polygons(
            vertices, torch.tensor(poly_offsets, dtype=torch.int64), torch.tensor(obj_offsets)
        )

    @staticmethod
    def cat(parts: list[Polygons]) -> Polygons:
        """Concatenate the objects of several images (offsets shifted), e.g. for a whole batch."""
        if not parts:
            return Polygons.from_lists([])
        vertices, polys, objs = [], [parts[0].poly_offsets[:1]], [parts[0].obj_offsets[:1]]
        v_base = p_base = 0
        for part in parts:
            vertices.append(part.vertices)
            polys.append(part.poly_offsets[1:] + v_base)
            objs.append(part.obj_offsets[1:] + p_base)
            v_base += part.vertices.shape[0]
            p_base += part.poly_offsets.numel() - 1
        return Polygons(torch.cat(vertices), torch.cat(polys), torch.cat(objs))

    def to(self, device: torch.device | str) -> Polygons:
        return Polygons(
            self.vertices.to(device), self.poly_offsets.to(device), self.obj_offsets.to(device)
        )


@dataclass
class ImageTarget:
    """Annotations of one image.

    boxes:  Tensor[N, 4] float32, (x1, y1, x2, y2) in resized-image pixels
    labels: Tensor[N] int64, contiguous class ids 1..num_classes-1 (0 is background)
    polygons: the N objects' polygons, resized-image pixels
    image_id: the dataset's image id (COCO id)
    image_size: (height, width) after resizing, before padding
    orig_size: (height, width) of the image file
    """

    boxes: Tensor
    labels: Tensor
    polygons: Polygons
    image_id: int
    image_size: tuple[int, int]
    orig_size: tuple[int, int]
    flipped: bool = False

    def to(self, device: torch.device | str) -> ImageTarget:
        return ImageTarget(
            self.boxes.to(device),
            self.labels.to(device),
            self.polygons.to(device),
            self.image_id,
            self.image_size,
            self.orig_size,
            self.flipped,
        )


@dataclass
class Batch:
    """images: Tensor[B, 3, H, W] float32, normalized for the backbone, zero-padded to a multiple of
    the size divisibility (32); targets: one ImageTarget per image."""

    images: Tensor
    targets: list[ImageTarget] = field(default_factory=list)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking), [t.to(device) for t in self.targets]
        )


@dataclass(frozen=True)
class Normalization:
    """How pixels are fed to the backbone; follows the backbone weights' format.

    bgr255: channels in BGR order with values 0..255 (Detectron/Caffe2 weights); otherwise RGB in 0..1.
    Normalized pixel = (pixel - mean) / std, per channel in the order above.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr255: bool

    @staticmethod
    def caffe2() -> Normalization:
        """The MLPerf reference: Detectron R-50.pkl, BGR 0-255, mean subtraction only."""
        return Normalization((102.9801, 115.9465, 122.7717), (1.0, 1.0, 1.0), bgr255=True)

    @staticmethod
    def torchvision() -> Normalization:
        """torchvision ImageNet weights: RGB 0-1 with ImageNet mean/std."""
        return Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), bgr255=False)
