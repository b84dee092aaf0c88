"""The graph-capturable core: backbone + FPN + RPN head trace into one graph (no graph break)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.config import BackboneConfig, FPNConfig, ModelConfig
from harness.model import build_model


def small_model(**kwargs) -> torch.nn.Module:
    cfg = ModelConfig(
        num_classes=3,
        backbone=BackboneConfig(depth=10, norm="gn", freeze_at=0),
        fpn=FPNConfig(out_channels=32, norm="gn"),
    )
    return build_model(dataclasses.replace(cfg, **kwargs)).train()


def core(model: torch.nn.Module, images: torch.Tensor):
    features = model.backbone(images)
    return features, model.rpn.head(features)


# aot_eager also traces the backward: 28 s on the loaded 2-core machine, so it runs with -m slow.
@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_core_compiles_as_one_graph_with_the_same_outputs(backend):
    """fullgraph=True raises at the first graph break; aot_eager also traces the backward."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = small_model()
    # Only the backbone's and the RPN head's parameters take part.
    model.roi_heads.requires_grad_(False)
    images = torch.randn(2, 3, 64, 96)
    compiled = torch.compile(core, fullgraph=True, backend=backend)
    got_features, (got_logits, got_deltas) = compiled(model, images)
    want_features, (want_logits, want_deltas) = core(model, images)
    for got, want in zip(
        [*got_features, got_logits, got_deltas],
        [*want_features, want_logits, want_deltas],
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    if backend == "aot_eager":

        def loss(features, logits, deltas):
            return logits.sum() + deltas.square().sum() + sum(f.square().mean() for f in features)

        loss(got_features, got_logits, got_deltas).backward()
        got_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        loss(want_features, want_logits, want_deltas).backward()
        want = [p for p in model.parameters() if p.requires_grad]
        for got, p in zip(got_grads, want, strict=True):
            torch.testing.assert_close(got, p.grad)


def test_model_compile_switch_compiles_the_core_in_place():
    model = small_model(compile=True)
    plain = small_model()
    assert model.backbone._compiled_call_impl is not None
    assert model.rpn.head._compiled_call_impl is not None
    assert plain.backbone._compiled_call_impl is None
    # In place: checkpoints and weights files keep the plain modules' keys.
    assert model.state_dict().keys() == plain.state_dict().keys()
