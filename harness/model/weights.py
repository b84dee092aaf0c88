"""ImageNet-pretrained weights for the ResNet body, from local files only (nothing is ever downloaded).

Two formats:
- "caffe2": Detectron's pickled blobs, e.g. `ImageNetPretrained/MSRA/R-50.pkl` (the MLPerf reference).
  A dict of numpy arrays, possibly under a "blobs" key, pickled by Python 2 (read with latin1). Names:
  `conv1_w`, `res_conv1_bn_{s,b}` (stem), `res{2..5}_{block}_branch2{a,b,c}_w` and `..._bn_{s,b}`
  (the block's convs and their norms), `res{2..5}_0_branch1_w` and `..._bn_{s,b}` (projection
  shortcut). BatchNorm is already folded into a per-channel scale `_s` and bias `_b`. Input: BGR 0-255
  minus the mean (Normalization.caffe2()). The MSRA R-50 puts the stride in the 1x1 conv, so the body
  must be built with stride_in_1x1=True (the default). Conv biases (`conv1_b`, `..._branch2a_b`) and
  the classifier (`fc1000_*`) are ignored, as the reference ignores them: its convs have no bias.
- "torchvision": a torchvision ResNet `state_dict()` saved with torch.save (`conv1.weight`,
  `bn1.{weight,bias,running_mean,running_var}`, `layer1.0.conv1.weight`, ...; `fc.*` ignored). Input:
  RGB 0-1 with ImageNet mean/std (Normalization.torchvision()). torchvision strides in the 3x3 conv:
  the body must be built with stride_in_1x1=False, which is checked.

Into FrozenBatchNorm2d the statistics are folded: scale = weight / sqrt(var + eps), bias = bias -
mean * scale. Into trainable BatchNorm2d they are copied. GroupNorm bodies have no counterpart in
either format.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.data.batch import Normalization
from harness.model.backbone import FrozenBatchNorm2d

FORMATS = ("auto", "caffe2", "torchvision")

# torchvision's BatchNorm2d eps, the one its ImageNet weights were trained with.
_TORCHVISION_BN_EPS = 1e-5
# Problems listed per kind in an error; a wrong file would otherwise print hundreds of keys.
_MAX_LISTED = 20


class WeightsError(ValueError):
    """A weights file that does not fit the body; the message names the file and the keys."""


def resolve_format(path: str | Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"model.backbone.weights_format must be one of {FORMATS}, got {fmt!r}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    if fmt != "auto":
        return fmt
    # torch.save writes a zip archive; Detectron's .pkl files are plain pickles.
    return "torchvision" if zipfile.is_zipfile(path) else "caffe2"


def normalization_for(cfg: ModelConfig) -> Normalization:
    """How the data loader must normalize pixels for cfg.backbone.weights.

    Without a weights file (random init) it is Normalization.torchvision(): inputs of unit scale suit
    a randomly initialized network (kaiming init assumes them), where BGR 0-255 would start every
    activation ~50x too large, and with norm "frozen_bn" nothing would bring it back.
    """
    if not cfg.backbone.weights:
        return Normalization.torchvision()
    fmt = resolve_format(cfg.backbone.weights, cfg.backbone.weights_format)
    return Normalization.caffe2() if fmt == "caffe2" else Normalization.torchvision()


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a pickle may name any callable, and a
    weights file should not run code."""

    _ALLOWED = frozenset(
        {
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy._core.numeric", "_frombuffer"),  # arrays in pickle protocol 5
            ("_codecs", "encode"),  # bytes in protocol 2 written by Python 3
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str):
        # Pickles written before numpy 2 name numpy.core, which numpy 2 renamed numpy._core.
        module = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a weights pickle"
            )
        return super().find_class(module, name)


def _read_caffe2(path: str | Path) -> dict[str, Tensor]:
    try:
        with open(path, "rb") as f:
            data = _NumpyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise WeightsError(
            f"{path}: not a Caffe2 weights pickle ({e}); for a torch.save file use "
            "model.backbone.weights_format=torchvision"
        ) from e
    blobs = data.get("blobs", data) if isinstance(data, Mapping) else None
    if not isinstance(blobs, Mapping):
        raise WeightsError(f"{path}: expected a dict of numpy arrays, got {type(data).__name__}")
    tensors = {}
    for key, value in blobs.items():
        if not isinstance(value, np.ndarray):
            raise WeightsError(f"{path}: blob {key!r} is a {type(value).__name__}, not an array")
        tensors[str(key)] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors


def _read_torchvision(path: str | Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise WeightsError(f"{path}: not a torch.save state_dict ({e})") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict (a dict of tensors)")
    return dict(state)


@dataclass
class _NormParams:
    """A normalization layer as stored in a file: y = (x - mean) / sqrt(var + eps) * weight + bias.
    All Tensor[C]."""

    weight: Tensor
    bias: Tensor
    mean: Tensor
    var: Tensor
    eps: float


class _Source:
    """The file's tensors; records what was taken, what was missing and what had the wrong shape, so
    that a file that does not fit is reported in one error."""

    def __init__(self, path: str | Path, fmt: str, tensors: dict[str, Tensor]) -> None:
        self.path, self.fmt, self.tensors = path, fmt, tensors
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.bad_shapes: list[str] = []

    def take(self, key: str, shape: torch.Size) -> Tensor | None:
        if key not in self.tensors:
            self.missing.append(key)
            return None
        self.used.add(key)
        value = self.tensors[key]
        if value.shape != shape:
            self.bad_shapes.append(f"{key} {tuple(value.shape)} (model: {tuple(shape)})")
            return None
        return value

    def skip(self, key: str) -> None:
        """Marks `key` as known and deliberately unused, if present."""
        if key in self.tensors:
            self.used.add(key)

    def check(self) -> None:
        unexpected = sorted(set(self.tensors) - self.used)
        problems = [
            f"{what} ({len(keys)}): {', '.join(keys[:_MAX_LISTED])}"
            + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
            for what, keys in (
                ("missing keys", self.missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", self.bad_shapes),
            )
            if keys
        ]
        if problems:
            raise WeightsError(
                f"{self.path}: {self.fmt} weights do not fit the ResNet body: "
                + "; ".join(problems)
            )


_BLOCK_MODULE = re.compile(r"layer(\d)\.(\d+)\.(?:(conv|norm)(\d)|downsample\.([01]))")


def _caffe2_prefix(module_path: str) -> str:
    """Body module path -> Detectron blob prefix: stem.conv1 -> conv1, stem.norm1 -> res_conv1_bn,
    layer1.0.conv2 -> res2_0_branch2b, layer1.0.norm2 -> res2_0_branch2b_bn,
    layer1.0.downsample.0 -> res2_0_branch1, layer1.0.downsample.1 -> res2_0_branch1_bn."""
    if module_path == "stem.conv1":
        return "conv1"
    if module_path == "stem.norm1":
        return "res_conv1_bn"
    m = _BLOCK_MODULE.fullmatch(module_path)
    if m is None:
        raise ValueError(f"no Caffe2 name for body module {module_path!r}")
    layer, block, kind, index, downsample = m.groups()
    if downsample is not None:
        branch, is_norm = "branch1", downsample == "1"
    else:
        branch, is_norm = "branch2" + "abc"[int(index) - 1], kind == "norm"
    return f"res{int(layer) + 1}_{block}_{branch}" + ("_bn" if is_norm else "")


def _torchvision_prefix(module_path: str) -> str:
    """Body module path -> torchvision name: the stem's layers sit at the top level and norms are
    called bn (stem.norm1 -> bn1, layer1.0.norm2 -> layer1.0.bn2); the rest is the same."""
    path = module_path.removeprefix("stem.")
    return re.sub(r"(^|\.)norm(\d)$", r"\1bn\2", path)


def _take_conv(src: _Source, module_path: str, conv: nn.Conv2d) -> Tensor | None:
    if src.fmt == "caffe2":
        prefix = _caffe2_prefix(module_path)
        src.skip(
            prefix + "_b"
        )  # conv biases: the body's convs have none (see the module docstring)
        return src.take(prefix + "_w", conv.weight.shape)
    return src.take(_torchvision_prefix(module_path) + ".weight", conv.weight.shape)


def _take_norm(src: _Source, module_path: str, channels: int) -> _NormParams | None:
    shape = torch.Size([channels])
    if src.fmt == "caffe2":
        prefix = _caffe2_prefix(module_path)
        scale, bias = src.take(prefix + "_s", shape), src.take(prefix + "_b", shape)
        if scale is None or bias is None:
            return None
        return _NormParams(scale, bias, torch.zeros(channels), torch.ones(channels), eps=0.0)
    prefix = _torchvision_prefix(module_path)
    src.skip(prefix + ".num_batches_tracked")
    parts = [
        src.take(f"{prefix}.{n}", shape) for n in ("weight", "bias", "running_mean", "running_var")
    ]
    if any(p is None for p in parts):
        return None
    return _NormParams(*parts, eps=_TORCHVISION_BN_EPS)


@torch.no_grad()
def _assign_norm(module: nn.Module, p: _NormParams) -> None:
    if isinstance(module, FrozenBatchNorm2d):
        # float64 so that folding adds no rounding of its own
        scale = p.weight.double() / (p.var.double() + p.eps).sqrt()
        module.weight.copy_(scale)
        module.bias.copy_(p.bias.double() - p.mean.double() * scale)
        return
    module.weight.copy_(p.weight)
    module.bias.copy_(p.bias)
    module.running_mean.copy_(p.mean)
    # Same denominator var + eps whatever eps the module uses: Caffe2's folded affine (var 1, eps 0)
    # becomes running_var 1 - eps, exact in eval mode.
    module.running_var.copy_(p.var + p.eps - module.eps)


def load_backbone_weights(body: nn.Module, path: str | Path, fmt: str = "auto") -> Normalization:
    """Loads a Caffe2 (Detectron .pkl) or torchvision (state_dict) ResNet file into `body`, a
    harness.model.backbone.ResNet, in place; returns the Normalization its inputs must have.

    fmt: "caffe2", "torchvision" or "auto" (a zip archive, as torch.save writes, is torchvision;
    anything else is read as a Caffe2 pickle).
    Raises FileNotFoundError for a missing file and WeightsError naming the file and every missing,
    unexpected or wrongly shaped key; nothing is assigned unless everything fits.
    """
    fmt = resolve_format(path, fmt)
    if fmt == "torchvision" and getattr(body, "stride_in_1x1", False):
        raise WeightsError(
            f"{path}: torchvision ResNets stride in the 3x3 conv but this body strides in the 1x1 "
            "conv; build it with model.backbone.stride_in_1x1=false"
        )
    tensors = _read_caffe2(path) if fmt == "caffe2" else _read_torchvision(path)
    src = _Source(path, fmt, tensors)
    convs: list[tuple[nn.Conv2d, Tensor | None]] = []
    norms: list[tuple[nn.Module, _NormParams | None]] = []
    for name, module in body.named_modules():
        if isinstance(module, nn.Conv2d):
            convs.append((module, _take_conv(src, name, module)))
        elif isinstance(module, FrozenBatchNorm2d | nn.BatchNorm2d):
            norms.append((module, _take_norm(src, name, module.weight.numel())))
        elif isinstance(module, nn.GroupNorm):
            raise WeightsError(
                f"{path}: {fmt} weights hold BatchNorm statistics, which cannot initialize the "
                f"GroupNorm layer {name!r}; use model.backbone.norm=frozen_bn or bn"
            )
    if fmt == "caffe2":
        for key in ["fc1000_w", "fc1000_b", *(k for k in tensors if k.endswith("_momentum"))]:
            src.skip(key)  # the ImageNet classifier; SGD momentum some Detectron pickles carry
    else:
        for key in ("fc.weight", "fc.bias"):
            src.skip(key)  # the ImageNet classifier
    src.check()
    with torch.no_grad():
        for conv, weight in convs:
            conv.weight.copy_(weight)
    for module, params in norms:
        _assign_norm(module, params)
    return Normalization.caffe2() if fmt == "caffe2" else Normalization.torchvision()
