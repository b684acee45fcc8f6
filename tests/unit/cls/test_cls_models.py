from __future__ import annotations

import pytest
import torch
import torchvision

from mlbseg.cls.config import ModelConfig
from mlbseg.cls.models import ARCHS, PreActResNet18, build_classifier
from mlbseg.errors import UserError


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def imagenet_r18(tmp_path_factory):
    """A torchvision resnet18 state dict with the 1000-class head, saved like ImageNet weights are."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize(("num_classes", "expected"), [(10, 11_171_146), (100, 11_217_316)])
def test_preact_resnet18_parameter_count(num_classes, expected):
    assert num_params(PreActResNet18(num_classes)) == expected


def test_preact_resnet18_forward_and_reference_keys():
    model = build_classifier(ModelConfig(arch="preact_resnet18"), 10)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    keys = model.state_dict().keys()
    assert {"conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.running_mean", "linear.bias"} <= keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut where the shape is unchanged
    assert not any(k.startswith("bn") for k in keys)  # no BN after the stem, no final BN


def test_preact_block_shortcut_uses_the_raw_input_when_identity():
    block = PreActResNet18(10).layer1[0].eval()
    x = torch.randn(1, 64, 8, 8)
    residual = block.conv2(torch.relu(block.bn2(block.conv1(torch.relu(block.bn1(x))))))
    torch.testing.assert_close(block(x), residual + x)


@pytest.mark.parametrize(
    ("arch", "num_classes", "expected"), [("resnet18", 14, 11_183_694), ("resnet50", 8, 23_524_424)]
)
def test_torchvision_resnets_parameter_count_head_and_forward(arch, num_classes, expected):
    model = build_classifier(ModelConfig(arch=arch), num_classes)
    assert num_params(model) == expected
    assert torch.count_nonzero(model.fc.bias) == 0
    fan_in, fan_out = model.fc.in_features, num_classes
    assert model.fc.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.15)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)


def test_local_imagenet_weights_load_except_the_head(imagenet_r18):
    path, state = imagenet_r18
    model = build_classifier(ModelConfig(arch="resnet18", weights=path), 14)
    torch.testing.assert_close(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(model.bn1.running_var, state["bn1.running_var"])
    assert model.fc.weight.shape == (14, 512)
    assert torch.count_nonzero(model.fc.bias) == 0


def test_weights_errors(tmp_path, imagenet_r18):
    path, state = imagenet_r18
    with pytest.raises(UserError, match=r"missing\.pth not found"):
        build_classifier(ModelConfig(arch="resnet18", weights=tmp_path / "missing.pth"), 14)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        build_classifier(ModelConfig(arch="resnet18", weights=tmp_path / "junk.pth"), 14)
    with pytest.raises(UserError, match="shapes do not fit torchvision resnet50"):
        build_classifier(ModelConfig(arch="resnet50", weights=path), 8)
    partial = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing \['layer1.0.conv1.weight'\]"):
        build_classifier(ModelConfig(arch="resnet18", weights=tmp_path / "partial.pth"), 14)
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="unexpected"):
        build_classifier(ModelConfig(arch="resnet18", weights=tmp_path / "extra.pth"), 14)


def test_registry_errors():
    with pytest.raises(
        UserError, match=r"model\.arch: unknown 'wrn28_10'.*'preact_resnet18', 'resnet18', 'resnet50'"
    ):
        build_classifier(ModelConfig(arch="wrn28_10"), 10)
    with pytest.raises(UserError, match="trains from scratch"):
        build_classifier(ModelConfig(arch="preact_resnet18", weights="w.pth"), 10)
    assert set(ARCHS) == {"preact_resnet18", "resnet18", "resnet50"}
