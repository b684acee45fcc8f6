"""Segmentation networks: segmentation-models-pytorch's, and the reference's NestedUNet (docs/design.md §4.3).

``unetplusplus`` and ``unet`` are smp models with a configurable encoder. ``encoder_depth=4`` gives an output
stride of 16, so 144×144 inputs work (depth 5 needs multiples of 32); the backbone stages beyond the depth,
which smp builds but never runs, are removed. smp is never asked for pretrained weights (it would download
them); a local encoder state dict can be loaded instead. ``nested_unet`` is the published MLB-Seg code's
network (docs/reference.md §6.14), written here from its description.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlbseg.errors import UserError

if TYPE_CHECKING:  # the config module imports this one for the registry's names
    from mlbseg.seg.config import ModelConfig

# The registry of architectures: ``model.arch`` is one of its keys.
# Values are smp class names (smp and timm are imported when such a model is built, so the config, which takes
# its choices from these keys, stays cheap to import for `repeat` and its workers), except ``nested_unet``:
# this module's :class:`NestedUNet`.
ARCHITECTURES: dict[str, str] = {"unetplusplus": "UnetPlusPlus", "unet": "Unet", "nested_unet": "NestedUNet"}

# The published NestedUNet's filter widths, one per level (docs/reference.md §6.14): 36 628 481 parameters
# for one input channel and one logit map.
NESTED_UNET_FEATURES: tuple[int, ...] = (64, 128, 256, 512, 1024)

# The smp-only keys of ``model`` that nested_unet refuses when they differ from their defaults.
SMP_ONLY_KEYS = ("encoder", "encoder_depth", "decoder_channels", "encoder_weights")


def output_channels(num_labels: int) -> int:
    """Logit maps of a model for ``num_labels`` labels (background included): 1 for binary, else K.

    Binary data keeps the paper's single foreground logit with BCE; K > 2 labels get K logits and softmax CE.

    Example:
        >>> output_channels(2), output_channels(3)
        (1, 3)
    """
    if num_labels < 2:
        raise ValueError(f"a segmentation needs at least 2 labels (background included), got {num_labels}")
    return 1 if num_labels == 2 else num_labels


def size_divisor(cfg: ModelConfig) -> int:
    """What the network's input height and width must be multiples of: its total downsampling.

    2**encoder_depth for the smp architectures (which refuse other sizes), 2**(L − 1) for ``nested_unet``
    with L = ``len(features)`` levels (the reference's constraint; ours pools any size down by flooring).

    Example:
        >>> from mlbseg.seg.config import ModelConfig
        >>> size_divisor(ModelConfig()), size_divisor(ModelConfig(arch="nested_unet", features=(4, 8, 16)))
        (16, 4)
    """
    if cfg.arch == "nested_unet":
        return 2 ** (len(cfg.features or NESTED_UNET_FEATURES) - 1)
    return 2**cfg.encoder_depth


class LogitMean(nn.Module):
    """The mean of several networks' logits: [N, C, H, W] images → [N, C_out, H, W] logits.

    DAST's evaluated model (Yang et al., IEEE JBHI 2022; docs/method.md §5.3): the mean of its clean and
    noisy branches' outputs, as PyMIC's dual-branch network gives in eval mode. Its state dict holds each
    network's under ``networks.<i>.``.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, images: Tensor) -> Tensor:
        """[N, C_out, H, W]: the networks' logits averaged."""
        return torch.stack([network(images) for network in self.networks]).mean(dim=0)


def build_model(cfg: ModelConfig, in_channels: int = 1, classes: int = 1) -> nn.Module:
    """Build a network that maps [N, in_channels, H, W] images to [N, classes, H, W] logits.

    Args:
        cfg: The ``model`` section: ``arch`` (one of :data:`ARCHITECTURES`). For the smp architectures:
            ``encoder``, an smp encoder name (e.g. ``resnet34``) or ``tu-<timm model>``; ``encoder_depth``,
            3–5 stages (H and W must be divisible by 2**encoder_depth, 16 for 4); ``decoder_channels``, one
            entry per stage; ``encoder_weights``, None for random initialisation or the path of a local
            encoder state dict (raw, or under a ``state_dict``/``model`` key; 3-channel first-conv kernels
            are adapted to ``in_channels``, summed for 1 channel as smp does for its own weights). For
            ``nested_unet``: ``features``, the filter widths per level (None: the published
            :data:`NESTED_UNET_FEATURES`); the smp-only keys (:data:`SMP_ONLY_KEYS`) must keep their
            defaults. For every architecture, ``foreground_prior``: None for the head's zero bias
            (probability 0.5 everywhere at the start) or p in (0, 1) for the bias logit(p), so training
            starts at the foreground share instead of first pushing every pixel to background (the prior
            initialisation of Lin et al., 2017, for imbalanced targets); with K logits the biases
            log(1 − p), log(p / (K − 1)), … start the softmax at background 1 − p and p shared by the
            foreground classes.
        in_channels: Input image channels.
        classes: Output channels (logits, no activation).

    Raises:
        UserError: Unknown architecture or encoder, ``decoder_channels`` of the wrong length, an encoder
            weights file that is missing, unreadable or does not match the encoder, or a key that does not
            apply to the architecture.
    """
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"model.arch: unknown {cfg.arch!r}; choose from {sorted(ARCHITECTURES)}")
    check_architecture_keys(cfg)
    if cfg.arch == "nested_unet":
        model: nn.Module = NestedUNet(in_channels, classes, features=cfg.features or NESTED_UNET_FEATURES)
    else:
        model = _build_smp_model(cfg, in_channels, classes)
    prior = cfg.foreground_prior
    if prior is not None:
        if not 0.0 < prior < 1.0:
            raise UserError(f"model.foreground_prior: must be in (0, 1), got {prior}")
        head = model.segmentation_head[0]  # the final convolution: logits
        with torch.no_grad():
            if classes == 1:
                head.bias.fill_(math.log(prior / (1.0 - prior)))
            else:
                head.bias.fill_(math.log(prior / (classes - 1)))
                head.bias[0] = math.log(1.0 - prior)
    return model


def check_architecture_keys(cfg: ModelConfig) -> None:
    """UserError for a ``model`` key that contradicts ``model.arch`` (nothing is imported or built).

    ``nested_unet`` has a fixed VGG-style layout: an smp-only key (:data:`SMP_ONLY_KEYS`) set away from its
    default would be silently unused, so it is refused; ``model.features`` sets that layout's widths and
    applies to nothing else. Widths must be at least two positive integers (two levels, one pooling).
    """
    features = cfg.features
    if cfg.arch != "nested_unet":
        if features is not None:
            raise UserError(
                f"model.features: applies to model.arch nested_unet only; {cfg.arch} takes "
                "model.encoder and model.decoder_channels (remove model.features)"
            )
        return
    defaults = {field.name: field.default for field in dataclasses.fields(cfg)}
    for key in SMP_ONLY_KEYS:
        value = getattr(cfg, key)
        if value != defaults[key]:
            raise UserError(
                f"model.{key}: {value!r} does not apply to model.arch nested_unet (a VGG-style UNet++ "
                f"whose widths are model.features); remove model.{key}"
            )
    if features is not None and (len(features) < 2 or min(features) < 1):
        raise UserError(
            f"model.features: needs at least two positive widths (one per level), got {list(features)}"
        )


def _build_smp_model(cfg: ModelConfig, in_channels: int, classes: int) -> nn.Module:
    """The smp model of ``cfg.arch`` with its encoder checked, built without downloads."""
    _check_encoder(cfg.encoder)
    if len(cfg.decoder_channels) != cfg.encoder_depth:
        raise UserError(
            f"model.decoder_channels: needs one entry per encoder stage (encoder_depth={cfg.encoder_depth}); "
            f"got {len(cfg.decoder_channels)}: {list(cfg.decoder_channels)}"
        )
    import segmentation_models_pytorch as smp

    model = getattr(smp, ARCHITECTURES[cfg.arch])(
        encoder_name=cfg.encoder,
        encoder_depth=cfg.encoder_depth,
        encoder_weights=None,  # never download; local weights are loaded below
        decoder_channels=tuple(cfg.decoder_channels),
        in_channels=in_channels,
        classes=classes,
    )
    drop_unused_stages(model.encoder, cfg.encoder_depth)
    if cfg.encoder_weights is not None:
        load_encoder_weights(model.encoder, Path(cfg.encoder_weights))
    return model


def drop_unused_stages(encoder: nn.Module, depth: int) -> None:
    """Remove, in place, the stages that an smp encoder of ``depth`` stages never runs.

    smp builds every stage of a backbone and runs only the first ``depth``: resnet34 at depth 4 keeps
    ``layer4``, 13.1 M of UNet++'s 24.0 M parameters, that no forward touches. Such weights are carried
    by everything that walks the parameters (the meta engine's gradients, the EMA teacher, the broadcast
    at start) and fill every checkpoint (UNet++/resnet34's weights: 92 MiB with them, 42 MiB without). A
    stage is dropped when the encoder's ``get_stages()`` (smp's map from output stride to stage modules)
    lists it at a stride above 2**depth and it is a direct child of the encoder (ResNet, ResNeXt, SE-Net,
    SK-Net, MobileOne). Stages that are slices of one ``nn.Sequential`` or ``nn.ModuleList`` (EfficientNet,
    MobileNet, DPN) stay: EfficientNet's drop-connect rate of every block depends on the block count.
    timm encoders are built with their used stages only. The output is unchanged. A state dict that still
    holds the dropped stages' keys (a checkpoint from before they were dropped, a full backbone's weights)
    loads: a load-state-dict pre-hook discards those keys.
    """
    try:
        stages = encoder.get_stages()
    except (AttributeError, NotImplementedError):  # an encoder without smp's stage map: left whole
        return
    unused = {id(module) for stride, modules in stages.items() if stride > 2**depth for module in modules}
    names = [name for name, child in encoder.named_children() if id(child) in unused]
    for name in names:
        delattr(encoder, name)
    if names:
        prefixes = tuple(f"{name}." for name in names)

        def discard_dropped(module, state_dict, prefix, *args) -> None:  # torch's pre-hook signature
            for key in [key for key in state_dict if key.startswith(prefix)]:
                if key[len(prefix) :].startswith(prefixes):
                    del state_dict[key]

        encoder.register_load_state_dict_pre_hook(discard_dropped)


class VGGBlock(nn.Sequential):
    """One UNet++ node: (3×3 conv with bias → BatchNorm → ReLU) twice, [N, in, H, W] → [N, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class NestedUNet(nn.Module):
    """UNet++ with VGG-style nodes, the published MLB-Seg code's network (docs/reference.md §6.14).

    Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for Medical Image
    Segmentation", DLMIA 2018. Node X^{i,0} (level i of L = ``len(features)``) is a :class:`VGGBlock` on the
    2×2 max-pooled X^{i−1,0} (on the image for i = 0); node X^{i,j}, j ≥ 1, is a block on the channel
    concatenation [X^{i,0}, …, X^{i,j−1}, up(X^{i+1,j−1})] (``features[i]·j + features[i+1]`` channels),
    ``up`` bilinear with ``align_corners=True`` to the skip's size; the logits are a 1×1 convolution of
    X^{0,L−1} (no deep supervision, as the paper's setting). With :data:`NESTED_UNET_FEATURES`, one input
    channel and one logit map it has the published 36 628 481 parameters.

    The reference doubles the size (H and W must be divisible by 2**(L − 1), 16 for five levels); here
    ``up`` goes to the skip's size, the same map wherever the reference works, and any H, W ≥ 2**(L − 1)
    works (odd sizes pool down by flooring).

    Args:
        in_channels: Image channels C.
        classes: Logit maps (no activation).
        features: Filter widths per level, at least two.

    Shapes: [N, C, H, W] float → [N, classes, H, W] logits.
    """

    def __init__(
        self, in_channels: int = 1, classes: int = 1, features: tuple[int, ...] = NESTED_UNET_FEATURES
    ) -> None:
        super().__init__()
        self.levels = len(features)
        nodes = {"0_0": VGGBlock(in_channels, features[0])}
        for level in range(1, self.levels):
            nodes[f"{level}_0"] = VGGBlock(features[level - 1], features[level])
        for column in range(1, self.levels):
            for level in range(self.levels - column):
                width = features[level] * column + features[level + 1]
                nodes[f"{level}_{column}"] = VGGBlock(width, features[level])
        self.nodes = nn.ModuleDict(nodes)  # "i_j": node X^{i,j}
        self.pool = nn.MaxPool2d(2)
        self.segmentation_head = nn.Sequential(nn.Conv2d(features[0], classes, kernel_size=1))

    def forward(self, images: Tensor) -> Tensor:
        """[N, C, H, W] images → [N, classes, H, W] logits."""
        rows: list[list[Tensor]] = [[] for _ in range(self.levels)]  # rows[i][j] = X^{i,j}
        features = images
        for level in range(self.levels):
            features = self.nodes[f"{level}_0"](features if level == 0 else self.pool(features))
            rows[level].append(features)
        for column in range(1, self.levels):
            for level in range(self.levels - column):
                skips = rows[level]
                below = rows[level + 1][column - 1]
                up = F.interpolate(below, size=skips[0].shape[-2:], mode="bilinear", align_corners=True)
                skips.append(self.nodes[f"{level}_{column}"](torch.cat([*skips, up], dim=1)))
        return self.segmentation_head(rows[0][-1])


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local encoder state dict into ``encoder`` (strict), adapting 3-channel first-conv kernels.

    Raises:
        UserError: The file is missing or unreadable, or its keys/shapes do not match ``encoder``.
    """
    if not path.is_file():
        raise UserError(
            f"encoder_weights: {path} is not a file (give a local encoder state dict; nothing is downloaded)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise UserError(f"encoder_weights: cannot read {path} as a torch state dict ({error})") from error
    state = _unwrap(loaded)
    if state is None:
        raise UserError(f"encoder_weights: {path} holds no state dict (expected tensors by parameter name)")
    state = _adapt_input_channels(state, encoder.state_dict())
    try:
        encoder.load_state_dict(state)
    except RuntimeError as error:
        summary = " ".join(str(error).split())[:300]
        raise UserError(f"encoder_weights: {path} does not match the encoder: {summary}") from error


def _check_encoder(encoder: str) -> None:
    """Raise a :class:`UserError` listing the choices when ``encoder`` is not a known encoder name."""
    import segmentation_models_pytorch as smp
    import timm

    if encoder.startswith("tu-") and timm.is_model(encoder[3:]):
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise UserError(f"Unknown encoder {encoder!r}; choose from {sorted(names)} or 'tu-<timm model name>'")


def _unwrap(loaded: object) -> dict[str, Tensor] | None:
    """The tensor mapping in a loaded file: the object itself or its ``state_dict``/``model`` entry."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
        if loaded and all(isinstance(value, Tensor) for value in loaded.values()):
            return dict(loaded)
    return None


def _adapt_input_channels(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adapt conv kernels [O, 3, k, k] to the encoder's input channels where only that dimension differs.

    One channel: sum of the RGB kernels. More: the RGB kernels repeated cyclically, scaled by 3 / channels,
    so a grey image replicated over the channels gives the same response.
    """
    adapted = dict(state)
    for key, weight in state.items():
        target = expected.get(key)
        if target is None or weight.ndim != 4 or weight.shape[1] != 3 or target.shape[1] == 3:
            continue
        if weight.shape[:1] + weight.shape[2:] != target.shape[:1] + target.shape[2:]:
            continue
        channels = target.shape[1]
        if channels == 1:
            adapted[key] = weight.sum(dim=1, keepdim=True)
        else:
            adapted[key] = weight[:, torch.arange(channels) % 3] * (3 / channels)
    return adapted
