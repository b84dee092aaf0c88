"""The ResNet body and FPN: shapes and strides, freezing, stride placement, the reference's parameter
count, the FPN's top-down arithmetic, channels-last and bad configs."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

from harness.config import BackboneConfig, FPNConfig, ModelConfig
from harness.model.backbone import (
    Bottleneck,
    FrozenBatchNorm2d,
    ResNet,
    build_backbone,
    make_norm,
)
from harness.model.fpn import FPN
from tests.conftest import devices


def model_cfg(
    depth: int = 18, norm: str = "frozen_bn", fpn_norm: str = "", **backbone
) -> ModelConfig:
    return ModelConfig(
        backbone=BackboneConfig(depth=depth, norm=norm, **backbone), fpn=FPNConfig(norm=fpn_norm)
    )


@pytest.mark.parametrize(
    "depth,norm,fpn_norm,height,width",
    [
        (18, "frozen_bn", "", 64, 64),
        (18, "frozen_bn", "", 96, 128),
        (18, "gn", "gn", 64, 96),
        (10, "gn", "gn", 96, 64),
        (34, "bn", "", 64, 64),
        (50, "frozen_bn", "", 96, 64),
    ],
)
def test_levels_have_fpn_channels_and_strides_4_to_64(depth, norm, fpn_norm, height, width):
    model = build_backbone(model_cfg(depth, norm, fpn_norm)).eval()
    with torch.no_grad():
        levels = model(torch.randn(2, 3, height, width))
    assert model.out_channels == 256
    # P6 takes every other pixel of P5, so an odd P5 size rounds up (as the reference's 25 -> 13)
    p6 = (-(-height // 64), -(-width // 64))
    assert [tuple(p.shape) for p in levels] == [
        *((2, 256, height // s, width // s) for s in (4, 8, 16, 32)),
        (2, 256, *p6),
    ]
    assert all(torch.isfinite(p).all() for p in levels)


def test_body_returns_c2_to_c5():
    body = ResNet(18)
    with torch.no_grad():
        features = body(torch.randn(1, 3, 64, 64))
    assert body.out_channels == (64, 128, 256, 512)
    assert [tuple(c.shape) for c in features] == [
        (1, ch, 64 // s, 64 // s) for ch, s in zip(body.out_channels, (4, 8, 16, 32), strict=True)
    ]


@pytest.mark.parametrize("depth,blocks", [(10, 1), (18, 2)])
def test_basic_block_depths_have_their_blocks_per_stage(depth, blocks):
    body = ResNet(depth, norm="gn", freeze_at=0)
    assert [len(getattr(body, f"layer{i}")) for i in (1, 2, 3, 4)] == [blocks] * 4
    # stem conv + per stage: 2 convs a block and a 1x1 projection in the first block of res3..res5
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in body.modules())
    assert convs == 1 + 4 * 2 * blocks + 3


def test_r50_fpn_parameter_count_matches_the_reference():
    # The reference body is torchvision's ResNet-50 without its classifier and with FrozenBatchNorm,
    # whose scale/bias are buffers: torchvision's count minus fc and minus every BatchNorm's affine.
    # The FPN adds, per level C in (256, 512, 1024, 2048): a 1x1 lateral conv C -> 256 with bias and
    # a 3x3 output conv 256 -> 256 with bias.
    tv = torchvision.models.resnet50(weights=None)
    bn_affine = sum(
        m.weight.numel() + m.bias.numel() for m in tv.modules() if isinstance(m, nn.BatchNorm2d)
    )
    body_params = sum(p.numel() for p in tv.parameters()) - (2048 * 1000 + 1000) - bn_affine
    fpn_params = sum(c * 256 + 256 + 256 * 256 * 9 + 256 for c in (256, 512, 1024, 2048))
    assert body_params == 23_454_912 and fpn_params == 3_344_384

    model = build_backbone(ModelConfig())
    assert sum(p.numel() for p in model.body.parameters()) == body_params
    assert sum(p.numel() for p in model.fpn.parameters()) == fpn_params
    # With trainable BatchNorm the body has torchvision's parameters exactly, less the classifier.
    bn_body = ResNet(50, norm="bn", freeze_at=0)
    assert sum(p.numel() for p in bn_body.parameters()) == body_params + bn_affine


def test_reference_body_trains_only_res3_to_res5():
    model = build_backbone(ModelConfig())  # frozen_bn, freeze_at 2
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("body.stem.", "body.layer1."))
    }
    assert frozen and all(not isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in model.modules())
    # the frozen affine holds buffers only: no optimizer can move it
    assert all(
        not list(m.parameters()) and set(dict(m.named_buffers())) == {"weight", "bias"}
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    )


@pytest.mark.parametrize(
    "freeze_at,frozen_prefixes", [(0, ()), (1, ("stem.",)), (3, ("stem.", "layer1.", "layer2."))]
)
def test_freeze_at_counts_stem_then_stages(freeze_at, frozen_prefixes):
    body = ResNet(18, norm="gn", freeze_at=freeze_at)
    body(torch.randn(1, 3, 64, 64)).pop().sum().backward()
    for name, p in body.named_parameters():
        is_frozen = name.startswith(frozen_prefixes) if frozen_prefixes else False
        assert p.requires_grad is not is_frozen, name
        assert (p.grad is None) is is_frozen, name


def test_trainable_bn_uses_frozen_bn_in_frozen_stages():
    # BatchNorm in a frozen stage would still update its running statistics in train mode.
    body = ResNet(18, norm="bn", freeze_at=2)
    assert isinstance(body.stem.norm1, FrozenBatchNorm2d)
    assert isinstance(body.layer1[0].norm1, FrozenBatchNorm2d)
    assert isinstance(body.layer2[0].norm1, nn.BatchNorm2d)
    assert body.layer2[0].norm1.weight.requires_grad


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_bottleneck_stride_placement(stride_in_1x1):
    strided = Bottleneck(32, 16, 2, lambda c: make_norm("frozen_bn", c, 32), stride_in_1x1).eval()
    unstrided = Bottleneck(32, 16, 1, lambda c: make_norm("frozen_bn", c, 32), stride_in_1x1).eval()
    unstrided.load_state_dict(strided.state_dict())
    expected = (2, 2) if stride_in_1x1 else (1, 1)
    assert strided.conv1.stride == expected and strided.conv2.stride == (3 - expected[0],) * 2
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        out = strided(x)
        subsampled_first = unstrided(x[:, :, ::2, ::2])
    # A stride in the 1x1 convs (main branch and shortcut) just reads every other pixel first;
    # a stride in the 3x3 conv sees the skipped pixels through its neighbourhood.
    assert out.shape == subsampled_first.shape == (1, 64, 4, 4)
    assert torch.allclose(out, subsampled_first, atol=1e-5) is stride_in_1x1


def test_body_stride_in_1x1_attribute_and_config():
    msra, tv_style = ResNet(50), ResNet(50, stride_in_1x1=False)
    assert msra.out_channels == tv_style.out_channels == (256, 512, 1024, 2048)
    for stage in (msra.layer2, msra.layer3, msra.layer4):
        assert stage[0].conv1.stride == (2, 2) and stage[0].conv2.stride == (1, 1)
    for stage in (tv_style.layer2, tv_style.layer3, tv_style.layer4):
        assert stage[0].conv1.stride == (1, 1) and stage[0].conv2.stride == (2, 2)
    assert msra.stride_in_1x1 and not tv_style.stride_in_1x1
    assert not ResNet(18, stride_in_1x1=True).stride_in_1x1  # basic blocks have no 1x1 conv


def test_fpn_top_down_sums_nearest_upsampled_levels_and_p6_subsamples_p5():
    channels = 8
    fpn = FPN([channels] * 4, channels)
    # Identity convs expose the arithmetic: P5 = C5, P4 = C4 + up(P5), ..., P6 = P5[::2, ::2].
    with torch.no_grad():
        for lateral, output in zip(fpn.lateral, fpn.output, strict=True):
            lateral.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
            output.weight.zero_()
            output.weight[:, :, 1, 1] = torch.eye(channels)
            lateral.bias.zero_()
            output.bias.zero_()
    c = [torch.randn(1, channels, 32 // 2**i, 32 // 2**i) for i in range(4)]
    with torch.no_grad():
        p2, p3, p4, p5, p6 = fpn(c)

    def up(x):
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    torch.testing.assert_close(p5, c[3])
    torch.testing.assert_close(p4, c[2] + up(c[3]))
    torch.testing.assert_close(p3, c[1] + up(p4))
    torch.testing.assert_close(p2, c[0] + up(p3))
    torch.testing.assert_close(p6, p5[:, :, ::2, ::2])


def test_fpn_init_is_kaiming_uniform_a1_with_zero_bias():
    fpn = FPN([64, 128, 256, 512])
    for conv in [*fpn.lateral, *fpn.output]:
        fan_in = conv.weight[0].numel()
        bound = (3.0 / fan_in) ** 0.5  # kaiming_uniform_(a=1): gain 1, bound sqrt(3 / fan_in)
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.95 * bound
        assert torch.all(conv.bias == 0)


def test_fpn_gn_drops_conv_bias_and_adds_group_norm():
    fpn = FPN([64, 128, 256, 512], norm="gn", gn_groups=32)
    for block in [*fpn.lateral, *fpn.output]:
        conv, gn = block
        assert conv.bias is None and isinstance(gn, nn.GroupNorm) and gn.num_groups == 32


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_channels_last_gives_the_same_levels(device, norm):
    model = (
        build_backbone(model_cfg(18, norm, fpn_norm="gn" if norm == "gn" else "")).eval().to(device)
    )
    x = torch.randn(2, 3, 64, 96, device=device)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_batchnorm_is_a_per_channel_affine_in_the_input_dtype(dtype):
    bn = FrozenBatchNorm2d(3)
    bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
    bn.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    x = torch.randn(2, 3, 4, 5).to(dtype)
    y = bn(x)
    assert y.dtype == dtype
    expected = x.float() * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(y.float(), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"depth": 101}, "model.backbone.depth"),
        ({"norm": "syncbn"}, "model.backbone.norm"),
        ({"freeze_at": 6}, "model.backbone.freeze_at"),
        ({"norm": "gn", "gn_groups": 5}, "model.backbone.gn_groups"),
    ],
)
def test_bad_backbone_config_is_named(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        build_backbone(ModelConfig(backbone=BackboneConfig(**{"depth": 18, **kwargs})))


def test_bad_fpn_config_and_input_are_named():
    with pytest.raises(ValueError, match=r"model\.fpn\.norm"):
        build_backbone(ModelConfig(backbone=BackboneConfig(depth=18), fpn=FPNConfig(norm="bn")))
    model = build_backbone(model_cfg(18))
    with pytest.raises(ValueError, match=r"images: expected Tensor\[B, 3, H, W\]"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="features: expected 4 maps"):
        model.fpn(model.body(torch.randn(1, 3, 64, 64))[1:])


def test_r18_fpn_trains_one_step():
    model = build_backbone(model_cfg(18, "gn", "gn"))
    x = torch.randn(1, 3, 64, 64)
    loss = sum(p.square().mean() for p in model(x))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
