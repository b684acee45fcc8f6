"""Segmentation networks from segmentation-models-pytorch, weights only from local files (docs/design.md §4).

The reference's hand-written NestedUNet (docs/reference.md §6.14) is replaced by smp's UNet++ with a
configurable encoder. ``encoder_depth=4`` gives an output stride of 16, so 144×144 inputs work (depth 5 needs
multiples of 32, docs/design.md §4.3). smp is never asked for pretrained weights (it would download them); a
local encoder state dict can be loaded instead.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mlbseg.errors import UserError

if TYPE_CHECKING:  # the config module imports this one for the registry's names
    from mlbseg.seg.config import ModelConfig

# The registry of architectures: ``model.arch`` is one of its keys.
# Values are smp class names: smp and timm are imported when a model is built, so the config (which takes its
# choices from these keys) stays cheap to import for `repeat` and its workers.
ARCHITECTURES: dict[str, str] = {"unetplusplus": "UnetPlusPlus", "unet": "Unet"}


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


def build_model(cfg: ModelConfig, in_channels: int = 1, classes: int = 1) -> nn.Module:
    """Build an smp encoder-decoder that maps [N, in_channels, H, W] images to [N, classes, H, W] logits.

    Args:
        cfg: The ``model`` section: ``arch`` (one of :data:`ARCHITECTURES`); ``encoder``, an smp encoder
            name (e.g. ``resnet34``) or ``tu-<timm model>``; ``encoder_depth``, 3–5 stages (H and W must be
            divisible by 2**encoder_depth, 16 for 4); ``decoder_channels``, one entry per stage;
            ``encoder_weights``, None for random initialisation or the path of a local encoder state dict
            (raw, or under a ``state_dict``/``model`` key; 3-channel first-conv kernels are adapted to
            ``in_channels``, summed for 1 channel as smp does for its own weights); ``foreground_prior``,
            None for the head's zero bias (probability 0.5 everywhere at the start) or p in (0, 1) for the
            bias logit(p), so training starts at the foreground share instead of first pushing every pixel
            to background (the prior initialisation of Lin et al., 2017, for imbalanced targets); with K
            logits the biases log(1 − p), log(p / (K − 1)), … start the softmax at background 1 − p and p
            shared by the foreground classes.
        in_channels: Input image channels.
        classes: Output channels (logits, no activation).

    Raises:
        UserError: Unknown architecture or encoder, ``decoder_channels`` of the wrong length, or an encoder
            weights file that is missing, unreadable or does not match the encoder.
    """
    if cfg.arch not in ARCHITECTURES:
        raise UserError(f"model.arch: unknown {cfg.arch!r}; choose from {sorted(ARCHITECTURES)}")
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
    if cfg.encoder_weights is not None:
        load_encoder_weights(model.encoder, Path(cfg.encoder_weights))
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
