"""Model construction: smp at 144×144 and depth 4, name checks, local encoder weights; the NestedUNet."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

from mlbseg.config import load_config, resolve_config_path
from mlbseg.engine.run_dir import save_config
from mlbseg.errors import UserError
from mlbseg.meta import bootstrap_weights
from mlbseg.seg.config import ModelConfig, SegConfig, check_config
from mlbseg.seg.model import LogitMean, NestedUNet, build_model, output_channels

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
    # a whole torchvision ResNet-18 (its classifier and the stage that depth 4 never runs included)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "encoder.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    model = _model(in_channels=1, encoder_weights=str(path), **SMALL)
    loaded = model.encoder.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer3.1.conv2.weight", "bn1.running_var", "layer1.0.bn1.bias"):
        torch.testing.assert_close(loaded[key], state[key])
    assert not any(key.startswith(("layer4.", "fc.")) for key in loaded)


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


@pytest.mark.parametrize("arch", ["unetplusplus", "unet"])
@pytest.mark.parametrize(("depth", "dropped"), [(3, ["layer3", "layer4"]), (4, ["layer4"]), (5, [])])
def test_encoder_stages_the_depth_never_runs_are_dropped_and_the_logits_stay_the_same(arch, depth, dropped):
    import segmentation_models_pytorch as smp

    decoder = (16, 16, 8, 8, 8)[:depth]
    torch.manual_seed(0)
    model = _model(arch=arch, encoder="resnet18", encoder_depth=depth, decoder_channels=decoder).eval()
    torch.manual_seed(0)  # smp's own model, built alike: the same weights, every stage kept
    whole = getattr(smp, {"unetplusplus": "UnetPlusPlus", "unet": "Unet"}[arch])(
        encoder_name="resnet18",
        encoder_depth=depth,
        encoder_weights=None,
        decoder_channels=decoder,
        in_channels=1,
        classes=1,
    ).eval()
    names = [name for name, _ in whole.encoder.named_children()]
    assert [name for name in names if not hasattr(model.encoder, name)] == dropped
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), whole(images))
    # every parameter left is used: each gets a gradient
    model.train()(images).sum().backward()
    assert all(param.grad is not None for param in model.parameters())
    # smp's state dict, with the dropped stages' keys, loads strictly: they are discarded
    model.load_state_dict(whole.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**whole.state_dict(), "encoder.layer9.weight": torch.zeros(1)})


def test_state_dicts_with_the_dropped_stage_load_into_copies_and_into_a_logit_mean():
    old = _model(encoder="resnet18", decoder_channels=(16, 16, 8, 8)).state_dict()
    extra = {f"encoder.layer4.{key}": value for key, value in _resnet18_layer4().items()}
    teacher = copy.deepcopy(_model(encoder="resnet18", decoder_channels=(16, 16, 8, 8)))
    teacher.load_state_dict({**old, **extra})
    pair = LogitMean([_model(encoder="resnet18", decoder_channels=(16, 16, 8, 8)) for _ in range(2)])
    pair.load_state_dict(
        {f"networks.{i}.{key}": value for i in range(2) for key, value in {**old, **extra}.items()}
    )
    for key, value in old.items():
        assert torch.equal(teacher.state_dict()[key], value)
        assert torch.equal(pair.state_dict()[f"networks.1.{key}"], value)


def _resnet18_layer4() -> dict[str, torch.Tensor]:
    """The state of a ResNet-18's last stage (what a checkpoint from before it was dropped holds)."""
    return {
        key.removeprefix("layer4."): value
        for key, value in torchvision.models.resnet18(weights=None).state_dict().items()
        if key.startswith("layer4.")
    }


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


# nested_unet: the reference's NestedUNet (docs/reference.md §6.14)

TINY_FEATURES = (4, 6, 8, 8, 10)  # five levels as published, tiny widths


def _parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_nested_unet_at_the_published_widths_has_the_published_parameter_count():
    model = build_model(ModelConfig(arch="nested_unet"), in_channels=1, classes=1)
    assert isinstance(model, NestedUNet)
    assert _parameters(model) == 36_628_481  # the published NestedUNet(1, 1), docs/reference.md §6.14
    assert abs(_parameters(model) / 36.6e6 - 1) < 0.05
    # node X^{1,2} sees X^{1,0}, X^{1,1} (128 each) and the upsampled X^{2,1} (256)
    assert model.nodes["1_2"][0].in_channels == 2 * 128 + 256
    # two channels, three logit maps: only the first convolution and the head grow
    wider = build_model(ModelConfig(arch="nested_unet"), in_channels=2, classes=output_channels(3))
    assert _parameters(wider) - _parameters(model) == 64 * 3 * 3 + 2 * (64 + 1)


def test_nested_unet_takes_144_inputs_and_any_size_with_tiny_widths_from_the_config():
    model = build_model(ModelConfig(arch="nested_unet", features=TINY_FEATURES)).eval()
    assert [model.nodes[f"{level}_0"][0].out_channels for level in range(5)] == list(TINY_FEATURES)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 144, 144)).shape == (2, 1, 144, 144)
        assert model(torch.rand(1, 1, 40, 27)).shape == (1, 1, 40, 27)  # not multiples of 16
    three = build_model(ModelConfig(arch="nested_unet", features=(4, 8)), in_channels=2, classes=3)
    with torch.no_grad():
        assert three.eval()(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_nested_unet_upsampling_is_the_references_bilinear_doubling():
    """At sizes divisible by 2**(levels − 1) our resize-to-skip equals the reference's ×2 (align_corners)."""
    model = NestedUNet(1, 1, features=(3, 5, 7)).eval()
    seen: dict[str, torch.Tensor] = {}
    model.nodes["0_1"].register_forward_pre_hook(lambda _, args: seen.update(input=args[0]))
    images = torch.rand(2, 1, 24, 24)
    with torch.no_grad():
        model(images)
        x00 = model.nodes["0_0"](images)
        x10 = model.nodes["1_0"](model.pool(x00))
        doubled = F.interpolate(x10, scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(seen["input"], torch.cat([x00, doubled], dim=1))


def test_nested_unet_foreground_prior_sets_its_head():
    model = build_model(ModelConfig(arch="nested_unet", features=(4, 8), foreground_prior=0.03))
    assert torch.sigmoid(model.segmentation_head[0].bias).item() == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("encoder", "resnet18"),
        ("encoder_depth", 3),
        ("decoder_channels", (16, 8, 8, 8)),
        ("encoder_weights", "w.pt"),
    ],
)
def test_nested_unet_refuses_smp_only_keys(key, value):
    with pytest.raises(UserError, match=rf"^model\.{key}: .* does not apply to model\.arch nested_unet"):
        build_model(ModelConfig(arch="nested_unet", **{key: value}))


@pytest.mark.parametrize("features", [(8,), (8, 0, 4)])
def test_nested_unet_refuses_bad_widths(features):
    with pytest.raises(UserError, match=r"^model\.features: needs at least two positive widths"):
        build_model(ModelConfig(arch="nested_unet", features=features))


def test_features_is_refused_for_smp_architectures():
    with pytest.raises(UserError, match=r"^model\.features: applies to model\.arch nested_unet only"):
        build_model(ModelConfig(features=(8, 16), **SMALL))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_nested_unet_meta_weights_forward_mode_equal_lookahead(one_thread):
    """The forward-mode engine (one JVP) gives the second-order lookahead's α and β on a tiny NestedUNet."""
    torch.manual_seed(0)
    model = NestedUNet(1, 1, features=(4, 6, 8)).double().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=5e-4)
    images, masks = torch.rand(6, 1, 16, 16).double(), (torch.rand(6, 1, 16, 16) > 0.5).double()
    for _ in range(2):  # momentum buffers, as in a running training
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(images[:4]), masks[:4]).backward()
        optimizer.step()
    with torch.no_grad():
        pseudo = (model(images[:4]) > 0).double()
    args = (model, optimizer, images[:4], masks[:4], pseudo, images[4:], masks[4:])
    alpha_f, beta_f = bootstrap_weights(*args, method="forward")
    alpha_l, beta_l = bootstrap_weights(*args, method="lookahead")
    assert alpha_l.shape == beta_l.shape == (4, 1, 16, 16)
    assert (alpha_l > 0).any()
    assert (beta_l > 0).any()
    torch.testing.assert_close(alpha_f, alpha_l, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(beta_f, beta_l, rtol=1e-8, atol=1e-12)


def test_promise12_reference_config_states_the_published_protocol(tmp_path):
    """The shipped config of the published MLB-Seg code's protocol (docs/reference.md §6.8–6.11, §6.14)."""
    path = resolve_config_path("promise12_reference", "seg")
    cfg = load_config(SegConfig, path)
    check_config(cfg)
    assert cfg.model == ModelConfig(arch="nested_unet")  # the published widths: 36 628 481 parameters
    assert (cfg.train.epochs, cfg.train.amp, cfg.train.batch_size, cfg.method.meta_batch_size) == (
        120,
        False,
        1,
        2,
    )
    optim, schedule = cfg.optim, cfg.schedule
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay, optim.grad_clip_norm) == (
        "sgd", 0.005, 0.9, 5e-4, 0.2,
    )  # fmt: skip
    assert (schedule.name, schedule.decay_epochs, schedule.warmup_epochs) == ("inverse", 20.0, 0)
    method = cfg.method
    assert (method.name, method.normalize, method.warmup_epochs) == ("mlbseg", "org", 0)
    assert method.uses_views
    assert method.views.zoom_pads == tuple(range(4, 31, 2))
    assert method.uses_consistency
    assert method.consistency_weight == 1.0
    assert method.consistency_pairing == "one_sided"  # each pair pulls one side, the other detached
    assert method.uses_ema
    ema = method.ema
    assert (ema.decay, ema.noise_std, ema.weight) == (0.99, 0.02, 1.0)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(SegConfig, tmp_path / "config.yaml") == cfg
    header = path.read_text().splitlines()[:4]
    assert any("mlbseg train promise12_reference --set" in line for line in header)
