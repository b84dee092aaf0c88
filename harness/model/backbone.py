"""The ResNet body (depth 10, 18, 34 or 50) and the ResNet-FPN backbone of Mask R-CNN.

The body follows the MLPerf reference (maskrcnn-benchmark's `R-50-FPN`): a stem (7x7 conv, stride 2, and a
3x3 max-pool, stride 2) then four stages res2..res5 whose last feature maps C2..C5 have strides 4, 8, 16
and 32. Module names mirror torchvision's ResNet (`layer1.0.conv1`, `layer1.0.downsample.0`) so weight
files map onto them by simple renaming (see harness/model/weights.py); `normN` is a block's
normalization layer, whatever its kind.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.config import ModelConfig
from harness.model.fpn import FPN

NORMS = ("frozen_bn", "bn", "gn")
STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
STEM_CHANNELS = 64

NormFactory = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with its statistics folded in and nothing trained: y = x * weight + bias per channel.

    weight, bias: Tensor[C] float32 buffers (not parameters, so no optimizer ever sees them). Caffe2
    weights store exactly this pair (scale, bias); torchvision BatchNorm statistics are folded into it
    when loaded. A fresh module is the identity.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        """x: Tensor[B, C, H, W], any float dtype and memory format; the output keeps both."""
        # Cast to the activation's dtype: under autocast the fp32 buffers would promote fp16
        # activations to fp32 for everything downstream.
        scale = self.weight.to(x.dtype).view(1, -1, 1, 1)
        shift = self.bias.to(x.dtype).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)

    def extra_repr(self) -> str:
        return str(self.num_channels)


def make_norm(kind: str, channels: int, gn_groups: int) -> nn.Module:
    """One normalization layer over `channels`: FrozenBatchNorm2d, BatchNorm2d or GroupNorm."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        if gn_groups <= 0 or channels % gn_groups:
            raise ValueError(
                f"model.backbone.gn_groups={gn_groups} must be positive and divide the {channels} "
                "channels of every GroupNorm layer"
            )
        return nn.GroupNorm(gn_groups, channels)
    raise ValueError(f"model.backbone.norm must be one of {NORMS}, got {kind!r}")


def _downsample(in_channels: int, out_channels: int, stride: int, norm: NormFactory) -> nn.Module:
    """The projection shortcut (Caffe2's `branch1`): 1x1 conv with the block's stride, then a norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits in the first. Output channels = width."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 conv to put the stride in
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = norm(width)
        self.downsample = (
            _downsample(in_channels, width, stride, norm)
            if stride != 1 or in_channels != width
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 (reduce to `width`) -> 3x3 -> 1x1 (expand to 4 * width). The stride sits in the first 1x1
    conv when `stride_in_1x1` (the original MSRA ResNet behind Detectron's R-50.pkl and the MLPerf
    reference), in the 3x3 conv otherwise (torchvision, fb.torch ResNets)."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: NormFactory, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride_1x1, bias=False)
        self.norm1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride_3x3, padding=1, bias=False)
        self.norm2 = norm(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.norm3 = norm(out_channels)
        self.downsample = (
            _downsample(in_channels, out_channels, stride, norm)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.norm1(self.conv1(x)))
        out = F.relu_(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class Stem(nn.Module):
    """7x7 conv (stride 2) -> norm -> ReLU -> 3x3 max-pool (stride 2): overall stride 4."""

    def __init__(self, norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)
        self.norm1 = norm(STEM_CHANNELS)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.norm1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """The ResNet body without its classifier.

    depth: 10 (one basic block per stage: the CPU demo's), 18, 34 (basic blocks) or 50
        (bottlenecks).
    norm: "frozen_bn" (FrozenBatchNorm2d everywhere: the reference), "bn" (trainable BatchNorm2d),
        "gn" (GroupNorm with `gn_groups` groups).
    freeze_at: the first `freeze_at` stages (0 = stem, 1 = res2, ...) get requires_grad False; 2 (stem
        + res2) is the reference, 0 freezes nothing. With norm "bn" the frozen stages use
        FrozenBatchNorm2d, since BatchNorm would keep updating their running statistics in train mode.
    stride_in_1x1: where bottleneck blocks put their stride (see Bottleneck); ignored for depths
        10/18/34.

    Attributes: out_channels, the channels of C2..C5; stride_in_1x1, True only when some block
    actually strides in a 1x1 conv.

    Random init (no weights file): convs kaiming_normal_(fan_out, relu) as torchvision does, norms the
    identity. The reference's kaiming_uniform_(a=1) is never seen there: it always loads R-50.pkl.
    """

    def __init__(
        self,
        depth: int = 50,
        norm: str = "frozen_bn",
        freeze_at: int = 2,
        stride_in_1x1: bool = True,
        gn_groups: int = 32,
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(
                f"model.backbone.depth must be one of {tuple(STAGE_BLOCKS)}, got {depth}"
            )
        if norm not in NORMS:
            raise ValueError(f"model.backbone.norm must be one of {NORMS}, got {norm!r}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"model.backbone.freeze_at must be in 0..5, got {freeze_at}")
        block = Bottleneck if depth >= 50 else BasicBlock

        def norm_for_stage(stage: int) -> NormFactory:
            kind = "frozen_bn" if norm == "bn" and stage < freeze_at else norm
            return lambda channels: make_norm(kind, channels, gn_groups)

        self.stem = Stem(norm_for_stage(0))
        in_channels = STEM_CHANNELS
        out_channels = []
        for index, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            width = STEM_CHANNELS * 2**index
            blocks = []
            for i in range(num_blocks):
                stride = 2 if index > 0 and i == 0 else 1
                blocks.append(
                    block(in_channels, width, stride, norm_for_stage(index + 1), stride_in_1x1)
                )
                in_channels = width * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            out_channels.append(in_channels)
        self.out_channels: tuple[int, ...] = tuple(out_channels)
        self.stride_in_1x1 = stride_in_1x1 and block is Bottleneck

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for stage in self.stages()[:freeze_at]:
            stage.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        """[stem, layer1, layer2, layer3, layer4]: the units freeze_at counts."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: Tensor[B, 3, H, W] normalized pixels. Returns [C2, C3, C4, C5], Tensor[B, C_i,
        ceil(H / s), ceil(W / s)] for strides s = 4, 8, 16, 32 (exactly H / s when H % 32 == 0)."""
        x = self.stem(x)
        features = []
        for stage in self.stages()[1:]:
            x = stage(x)
            features.append(x)
        return features


class BackboneWithFPN(nn.Module):
    """ResNet body + FPN: images -> [P2, P3, P4, P5, P6] with `out_channels` channels each."""

    def __init__(self, body: ResNet, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: Tensor[B, 3, H, W] normalized as the body's weights expect (H, W multiples of 32).
        Returns [P2, P3, P4, P5, P6]: Tensor[B, out_channels, H / s, W / s] for s = 4, 8, 16, 32,
        and P6 at ceil(H / 64), ceil(W / 64)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images: expected Tensor[B, 3, H, W], got shape {tuple(images.shape)}"
            )
        return self.fpn(self.body(images))


def build_backbone(cfg: ModelConfig) -> BackboneWithFPN:
    """The backbone described by cfg.backbone and cfg.fpn, randomly initialized: load pretrained
    weights into `.body` with harness.model.weights.load_backbone_weights."""
    b = cfg.backbone
    body = ResNet(b.depth, b.norm, b.freeze_at, b.stride_in_1x1, b.gn_groups)
    fpn = FPN(body.out_channels, cfg.fpn.out_channels, cfg.fpn.norm, b.gn_groups)
    return BackboneWithFPN(body, fpn)
