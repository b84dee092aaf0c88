"""Feature Pyramid Network over C2..C5, as in the MLPerf reference (maskrcnn-benchmark's FPN with
`LastLevelMaxPool`): P2..P5 from lateral 1x1 convs, nearest top-down upsampling and 3x3 output convs,
and P6 = max_pool2d(P5, kernel 1, stride 2) for the RPN."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

FPN_NORMS = ("", "gn")


def _conv(in_channels: int, out_channels: int, kernel_size: int, norm: str, gn_groups: int):
    """A conv initialized as the reference's conv_with_kaiming_uniform (kaiming_uniform_ a=1, zero
    bias); with norm "gn" the conv drops its bias and a GroupNorm follows. No activation."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm != "gn"
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if norm != "gn":
        return conv
    if gn_groups <= 0 or out_channels % gn_groups:
        raise ValueError(
            f"model.backbone.gn_groups={gn_groups} (also used by the FPN) must be positive and "
            f"divide model.fpn.out_channels={out_channels}"
        )
    return nn.Sequential(conv, nn.GroupNorm(gn_groups, out_channels))


class FPN(nn.Module):
    """in_channels: channels of C2..C5 (e.g. (256, 512, 1024, 2048) for ResNet-50).
    out_channels: channels of every P level (256 in the reference).
    norm: "" (plain convs with bias) or "gn" (GroupNorm after every FPN conv, `gn_groups` groups).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        norm: str = "",
        gn_groups: int = 32,
    ) -> None:
        super().__init__()
        if norm not in FPN_NORMS:
            raise ValueError(f"model.fpn.norm must be one of {FPN_NORMS}, got {norm!r}")
        if out_channels <= 0:
            raise ValueError(f"model.fpn.out_channels must be positive, got {out_channels}")
        self.out_channels = out_channels
        self.lateral = nn.ModuleList(
            _conv(c, out_channels, 1, norm, gn_groups) for c in in_channels
        )
        self.output = nn.ModuleList(
            _conv(out_channels, out_channels, 3, norm, gn_groups) for _ in in_channels
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """features: [C2, C3, C4, C5], each Tensor[B, in_channels[i], H_i, W_i] with H_i = 2 * H_{i+1}
        (inputs padded to a multiple of 32). Returns [P2, P3, P4, P5, P6], Tensor[B, out_channels,
        H_i, W_i], P6 at half P5's size rounded up (every other pixel of P5)."""
        if len(features) != len(self.lateral):
            raise ValueError(
                f"features: expected {len(self.lateral)} maps (C2..C5), got {len(features)}"
            )
        last = self.lateral[-1](features[-1])
        results = [self.output[-1](last)]
        for feature, lateral, output in zip(
            reversed(features[:-1]),
            reversed(self.lateral[:-1]),
            reversed(self.output[:-1]),
            strict=True,
        ):
            # Upsample to the lateral's own size rather than by 2x so that odd sizes still add up;
            # for inputs padded to a multiple of 32 the two are the same.
            top_down = F.interpolate(last, size=feature.shape[-2:], mode="nearest")
            last = lateral(feature) + top_down
            results.insert(0, output(last))
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        return results
