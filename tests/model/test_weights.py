"""Backbone weight loading: Detectron Caffe2 pickles and torchvision state_dicts give the same C5 as an
independent forward with the same weights; files that do not fit are refused with named keys."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from harness.config import BackboneConfig, ModelConfig
from harness.data.batch import Normalization
from harness.model.backbone import ResNet
from harness.model.weights import WeightsError, load_backbone_weights, normalization_for

STAGES = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def caffe2_blobs(depth: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random blobs named and shaped as Detectron's ImageNet ResNets (MSRA R-50.pkl for depth 50):
    conv weights `_w` (with the conv biases `_b` those files carry), folded BatchNorm `_bn_s`/`_bn_b`,
    and the classifier fc1000."""
    blobs: dict[str, np.ndarray] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        fan_in = inp * k * k
        blobs[name + "_w"] = (rng.standard_normal((out, inp, k, k)) * (2 / fan_in) ** 0.5).astype(
            np.float32
        )
        blobs[name + "_b"] = rng.standard_normal(out).astype(np.float32)
        blobs[name + "_bn_s"] = rng.uniform(0.5, 1.2, out).astype(np.float32)
        blobs[name + "_bn_b"] = rng.uniform(-0.2, 0.2, out).astype(np.float32)

    conv("conv1", 64, 3, 7)
    blobs["res_conv1_bn_s"] = blobs.pop("conv1_bn_s")
    blobs["res_conv1_bn_b"] = blobs.pop("conv1_bn_b")
    expansion = 4 if depth == 50 else 1
    in_ch = 64
    for stage, blocks in zip(range(2, 6), STAGES[depth], strict=True):
        width = 64 * 2 ** (stage - 2)
        for b in range(blocks):
            p = f"res{stage}_{b}"
            if depth == 50:
                conv(p + "_branch2a", width, in_ch, 1)
                conv(p + "_branch2b", width, width, 3)
                conv(p + "_branch2c", 4 * width, width, 1)
            else:
                conv(p + "_branch2a", width, in_ch, 3)
                conv(p + "_branch2b", width, width, 3)
            if b == 0 and (stage > 2 or in_ch != width * expansion):
                conv(p + "_branch1", width * expansion, in_ch, 1)
            in_ch = width * expansion
    blobs["fc1000_w"] = rng.standard_normal((1000, in_ch)).astype(np.float32)
    blobs["fc1000_b"] = rng.standard_normal(1000).astype(np.float32)
    return blobs


def caffe2_r50_c5(blobs: dict[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """The MSRA ResNet-50 written out from its blobs: stride in the 1x1 convs, conv biases unused
    (Detectron builds these convs without bias), BatchNorm as the stored affine."""

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(blobs[name])

    def affine(y: torch.Tensor, name: str) -> torch.Tensor:
        return y * t(name + "_s").view(1, -1, 1, 1) + t(name + "_b").view(1, -1, 1, 1)

    x = F.relu(affine(F.conv2d(x, t("conv1_w"), stride=2, padding=3), "res_conv1_bn"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks in zip(range(2, 6), STAGES[50], strict=True):
        for b in range(blocks):
            p = f"res{stage}_{b}"
            stride = 2 if stage > 2 and b == 0 else 1
            y = F.relu(affine(F.conv2d(x, t(p + "_branch2a_w"), stride=stride), p + "_branch2a_bn"))
            y = F.relu(affine(F.conv2d(y, t(p + "_branch2b_w"), padding=1), p + "_branch2b_bn"))
            y = affine(F.conv2d(y, t(p + "_branch2c_w")), p + "_branch2c_bn")
            if b == 0:
                x = affine(F.conv2d(x, t(p + "_branch1_w"), stride=stride), p + "_branch1_bn")
            x = F.relu(y + x)
    return x


class Python2StylePickler(pickle._Pickler):
    """Writes what Detectron's Python 2 pickles hold: bytes as Python 2 `str` opcodes (which Python 3
    reads only with encoding latin1) and numpy under its pre-2.0 module name numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def write_python2_pickle(obj, path: Path) -> None:
    buffer = io.BytesIO()
    Python2StylePickler(buffer, protocol=2).dump(obj)
    raw = buffer.getvalue()
    assert b"numpy.core.multiarray\n_reconstruct" in raw and pickle.BINSTRING in raw
    path.write_bytes(raw)


@pytest.fixture(scope="module")
def r50_caffe2(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    blobs = caffe2_blobs(50, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("c2") / "R-50.pkl"
    write_python2_pickle({"blobs": blobs}, path)
    return path, blobs


def perturbed_torchvision(depth: int) -> nn.Module:
    """A torchvision ResNet with non-trivial BatchNorm statistics, so that folding them matters."""
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def torchvision_c5(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


@pytest.fixture(scope="module")
def r50_torchvision(tmp_path_factory) -> tuple[Path, nn.Module]:
    model = perturbed_torchvision(50)
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_caffe2_r50_pkl_gives_the_msra_forward(r50_caffe2):
    path, blobs = r50_caffe2
    body = ResNet(50).eval()  # the reference: frozen BN, stride in 1x1
    assert load_backbone_weights(body, path) == Normalization.caffe2()
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        got, expected = body(x)[-1], caffe2_r50_c5(blobs, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(body.layer3[2].norm2.weight, torch.from_numpy(blobs["res4_2_branch2b_bn_s"]))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_torchvision_state_dict_gives_torchvision_layer4(r50_torchvision, norm):
    path, model = r50_torchvision
    body = ResNet(50, norm=norm, stride_in_1x1=False).eval()
    assert load_backbone_weights(body, path, "auto") == Normalization.torchvision()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, expected = body(x)[-1], torchvision_c5(model, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_caffe2_affine_into_trainable_bn_is_exact_in_eval(tmp_path):
    blobs = caffe2_blobs(18, np.random.default_rng(1))
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps(blobs))  # a plain dict, no "blobs" wrapper
    frozen, bn = ResNet(18).eval(), ResNet(18, norm="bn", freeze_at=0).eval()
    load_backbone_weights(frozen, path, "caffe2")
    load_backbone_weights(bn, path, "caffe2")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bn(x)[-1], frozen(x)[-1], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    return perturbed_torchvision(18).state_dict()


def save_state(state: dict, tmp_path: Path) -> Path:
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda s: s.pop("layer1.0.conv1.weight"), r"missing keys \(1\): layer1\.0\.conv1\.weight"),
        (lambda s: s.pop("bn1.running_var"), r"missing keys \(1\): bn1\.running_var"),
        (
            lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)),
            r"unexpected keys \(1\): layer5\.0\.conv1\.weight",
        ),
        (
            lambda s: s.__setitem__("layer2.1.conv2.weight", torch.zeros(128, 128, 1, 1)),
            r"shape mismatches \(1\): layer2\.1\.conv2\.weight \(128, 128, 1, 1\) \(model: \(128, 128, 3, 3\)\)",
        ),
    ],
)
def test_a_file_that_does_not_fit_names_file_and_keys_and_assigns_nothing(
    r18_state, tmp_path, edit, message
):
    state = dict(r18_state)
    edit(state)
    path = save_state(state, tmp_path)
    body = ResNet(18)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    with pytest.raises(WeightsError, match=message) as error:
        load_backbone_weights(body, path)
    assert str(path) in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


def test_torchvision_statistics_fold_into_the_frozen_affine(r18_state, tmp_path):
    body = ResNet(18)
    load_backbone_weights(body, save_state(r18_state, tmp_path))
    bn = {
        n: r18_state[f"layer2.1.bn2.{n}"] for n in ("weight", "bias", "running_mean", "running_var")
    }
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + 1e-5)  # torchvision's eps
    torch.testing.assert_close(body.layer2[1].norm2.weight, scale)
    torch.testing.assert_close(body.layer2[1].norm2.bias, bn["bias"] - bn["running_mean"] * scale)
    assert torch.equal(body.layer2[1].conv2.weight, r18_state["layer2.1.conv2.weight"])


def test_caffe2_errors_use_caffe2_names(tmp_path):
    blobs = caffe2_blobs(18, np.random.default_rng(2))
    del blobs["res3_0_branch1_bn_s"]
    blobs["res6_0_branch2a_w"] = np.zeros(1, np.float32)
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}))
    with pytest.raises(
        WeightsError, match=r"missing keys.*res3_0_branch1_bn_s.*unexpected.*res6_0"
    ):
        load_backbone_weights(ResNet(18), path)


def test_missing_file_and_bad_format_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "R-50.pkl"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_backbone_weights(ResNet(18), missing)
    with pytest.raises(ValueError, match="weights_format"):
        load_backbone_weights(ResNet(18), missing, "onnx")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_wrong_format_for_the_file_is_refused(r18_state, tmp_path):
    tv_path = save_state(r18_state, tmp_path)
    with pytest.raises(WeightsError, match="not a Caffe2 weights pickle"):
        load_backbone_weights(ResNet(18), tv_path, "caffe2")
    c2_path = tmp_path / "R-18.pkl"
    c2_path.write_bytes(pickle.dumps(caffe2_blobs(18, np.random.default_rng(3))))
    with pytest.raises(WeightsError, match=r"not a torch\.save state_dict"):
        load_backbone_weights(ResNet(18), c2_path, "torchvision")


class _RunsCode:
    def __reduce__(self):
        return (print, ("a weights file ran code",))


def test_a_pickle_naming_other_callables_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": _RunsCode()}))
    with pytest.raises(WeightsError, match=r"builtins\.print is not allowed"):
        load_backbone_weights(ResNet(18), path)


def test_torchvision_weights_need_the_stride_in_the_3x3(r18_state, tmp_path):
    path = save_state(r18_state, tmp_path)
    load_backbone_weights(ResNet(18, stride_in_1x1=True), path)  # basic blocks: no 1x1 to stride in
    with pytest.raises(WeightsError, match="stride_in_1x1=false"):
        load_backbone_weights(ResNet(50, stride_in_1x1=True), path)


def test_groupnorm_body_cannot_take_batchnorm_weights(r18_state, tmp_path):
    path = save_state(r18_state, tmp_path)
    with pytest.raises(WeightsError, match=r"GroupNorm layer 'stem\.norm1'"):
        load_backbone_weights(ResNet(18, norm="gn"), path)


def test_normalization_follows_the_weights_file(r18_state, tmp_path):
    def cfg(weights: str, fmt: str = "auto") -> ModelConfig:
        return ModelConfig(backbone=BackboneConfig(weights=weights, weights_format=fmt))

    tv_path = save_state(r18_state, tmp_path)
    c2_path = tmp_path / "R-18.pkl"
    c2_path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(1, np.float32)}}))
    assert normalization_for(cfg("")) == Normalization.torchvision()  # random init
    assert normalization_for(cfg(str(tv_path))) == Normalization.torchvision()
    assert normalization_for(cfg(str(c2_path))) == Normalization.caffe2()
    assert normalization_for(cfg(str(c2_path), "caffe2")) == Normalization.caffe2()
    with pytest.raises(FileNotFoundError, match=r"missing\.pkl"):
        normalization_for(cfg(str(tmp_path / "missing.pkl")))
