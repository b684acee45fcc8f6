"""smp model construction: 144×144 at depth 4, name checks, local encoder weights."""

from __future__ import annotations

import pytest
import torch

from mlbseg.errors import UserError
from mlbseg.seg.config import ModelConfig
from mlbseg.seg.model import build_model, output_channels

SMALL = {"encoder": "resnet18", "decoder_channels": (16, 16, 8, 8)}


def _model(in_channels: int = 1, **fields):
    return build_model(ModelConfig(**fields), in_channels=in_channels)


@pytest.mark.parametrize("arch", ["unetplusplus", "unet"])
def test_144_input_gives_144_logits(arch):
    model = _model(arch=arch, **SMALL).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 144, 144))
    assert logits.shape == (2, 1, 144, 144)


def test_two_channels_and_three_labels_give_three_logit_maps(tmp_path):
    model = build_model(ModelConfig(**SMALL), in_channels=2, classes=output_channels(3)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)
    # local RGB encoder weights: kernels repeated over the two channels and scaled by 3/2
    source = _model(in_channels=3, **SMALL)
    path = tmp_path / "encoder.pt"
    torch.save(source.encoder.state_dict(), path)
    adapted = build_model(ModelConfig(encoder_weights=str(path), **SMALL), in_channels=2, classes=3)
    rgb = source.encoder.state_dict()["conv1.weight"]
    torch.testing.assert_close(adapted.encoder.state_dict()["conv1.weight"], rgb[:, [0, 1]] * 1.5)


def test_unknown_names_list_the_choices():
    with pytest.raises(UserError, match=r"model\.arch: unknown 'unet\+\+\+'.*'unetplusplus'") as error:
        _model(arch="unet+++")
    assert "unet" in str(error.value)
    with pytest.raises(UserError, match=r"Unknown encoder 'resnet35'.*'resnet34'"):
        _model(encoder="resnet35")
    with pytest.raises(UserError, match="decoder_channels"):
        _model(encoder="resnet18", decoder_channels=(16, 8))


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_local_rgb_weights_are_loaded_and_summed_to_one_channel(tmp_path, wrap):
    source = _model(in_channels=3, **SMALL)
    state = source.encoder.state_dict()
    path = tmp_path / "encoder.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    model = _model(in_channels=1, encoder_weights=str(path), **SMALL)
    loaded = model.encoder.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer4.1.conv2.weight", "bn1.running_var", "layer1.0.bn1.bias"):
        torch.testing.assert_close(loaded[key], state[key])


def test_local_weights_same_channels_load_exactly(tmp_path):
    source = _model(**SMALL)
    path = tmp_path / "encoder.pth"
    torch.save(source.encoder.state_dict(), path)
    model = _model(encoder_weights=str(path), **SMALL)
    for key, value in source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[key], value)


def test_bad_weight_files_name_the_file(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(UserError, match=r"missing\.pt"):
        _model(encoder_weights=str(missing), **SMALL)
    with pytest.raises(UserError, match="imagenet"):
        _model(encoder_weights="imagenet", **SMALL)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"garbage\.pt"):
        _model(encoder_weights=str(garbage), **SMALL)
    other = tmp_path / "other.pt"
    torch.save(_model(encoder="resnet34", decoder_channels=(16, 16, 8, 8)).encoder.state_dict(), other)
    with pytest.raises(UserError, match=r"other\.pt.*does not match"):
        _model(encoder_weights=str(other), **SMALL)


def test_timm_encoder_names_are_checked_with_timm():
    with pytest.raises(UserError, match="tu-not_a_model"):
        _model(encoder="tu-not_a_model")


def test_foreground_prior_starts_the_head_at_that_probability():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        plain = _model(**SMALL).eval()(images).sigmoid().mean()
        torch.manual_seed(0)
        model = _model(foreground_prior=0.03, **SMALL).eval()
        primed = model(images).sigmoid().mean()
    assert torch.sigmoid(model.segmentation_head[0].bias).item() == pytest.approx(0.03)
    assert primed < 0.1 < plain  # smp's zero bias starts near 0.5 (0.38 here)


def test_foreground_prior_with_k_logits_starts_the_softmax_at_background_1_minus_p():
    model = build_model(ModelConfig(foreground_prior=0.03, **SMALL), in_channels=2, classes=3)
    start = model.segmentation_head[0].bias.softmax(dim=0)
    torch.testing.assert_close(start, torch.tensor([0.97, 0.015, 0.015]))


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1])
def test_foreground_prior_outside_0_1_is_refused(prior):
    with pytest.raises(UserError, match=r"model\.foreground_prior: must be in"):
        _model(foreground_prior=prior, **SMALL)
