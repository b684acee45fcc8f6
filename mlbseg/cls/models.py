"""Classification networks: the reference's PreActResNet18 (CIFAR) and torchvision ResNet-18/50, new head.

Every model maps images [N, 3, H, W] (normalised floats) to logits [N, K]. ImageNet weights are never
downloaded: pass the path of a local torchvision state dict (docs/reference.md §5, §7 item 27).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from mlbseg.errors import UserError

if TYPE_CHECKING:  # the config module imports this one for the registry's names
    from mlbseg.cls.config import ModelConfig


class PreActBlock(nn.Module):
    """Pre-activation basic block: ``conv(ReLU(BN(x)))`` twice, plus a shortcut.

    The shortcut is the identity on the un-activated input, or a strided 1×1 convolution of the activated
    input when the shape changes (stride ≠ 1 or width change).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """[N, in_planes, H, W] → [N, planes, H/stride, W/stride]."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """The reference's PreActResNet18 for 32×32 images (11 171 146 parameters for 10 classes).

    Stem conv3×3 (3→64) without BN/ReLU, four stages of two :class:`PreActBlock` (64, 128, 256, 512
    channels; strides 1, 2, 2, 2), no final BN-ReLU, global average pool, ``Linear(512, K)``; PyTorch default
    init. Module names (``conv1``, ``layer1``…``layer4``, ``linear``) match the reference's state-dict keys.
    The pool is adaptive, which equals the reference's ``avg_pool2d(4)`` on 32×32 inputs.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        widths, strides, in_planes = (64, 128, 256, 512), (1, 2, 2, 2), 64
        for i, (planes, stride) in enumerate(zip(widths, strides, strict=True), start=1):
            setattr(
                self,
                f"layer{i}",
                nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)),
            )
            in_planes = planes
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Images [N, 3, 32, 32] → logits [N, K]."""
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # [N, 512, 4, 4]
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise UserError(
            f"{path} not found: give the path of a local torchvision ImageNet state dict"
        ) from err
    except Exception as err:  # torch.load fails on bad files with many types (pickle, zip, struct, ...)
        raise UserError(f"{path} is not a readable PyTorch weights file ({err}); replace it") from err
    if not isinstance(state, dict):
        raise UserError(
            f"{path}: expected a state dict (parameter name → tensor), got {type(state).__name__}"
        )
    return state


def load_imagenet_weights(model: nn.Module, path: str | Path, arch: str) -> None:
    """Load a torchvision ImageNet state dict into ``model``: strict for every key except the ``fc.`` head."""
    path = Path(path)
    backbone = {k: v for k, v in _load_state_dict(path).items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as err:
        raise UserError(f"{path}: shapes do not fit torchvision {arch}; use {arch} ImageNet weights") from err
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(
            f"{path}: not a torchvision {arch} state dict ({detail}); use {arch} ImageNet weights"
        )


def torchvision_resnet(arch: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """Torchvision ``resnet18``/``resnet50`` with a new head ``fc = Linear(features, K)``.

    The head has a Xavier-normal weight and a zero bias, as in the reference.

    Args:
        arch: ``resnet18`` or ``resnet50``.
        num_classes: K.
        weights: Optional local torchvision ImageNet state dict for the backbone (``fc.`` keys ignored).

    Returns:
        The model (11 183 694 parameters for resnet18 with 14 classes, 23 524 424 for resnet50 with 8);
        state-dict keys are torchvision's.
    """
    model = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        load_imagenet_weights(model, weights, arch)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    nn.init.xavier_normal_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    return model


def _preact(num_classes: int, weights: str | Path | None) -> nn.Module:
    if weights is not None:
        raise UserError(
            "model weights: preact_resnet18 trains from scratch; set weights only for resnet18/resnet50"
        )
    return PreActResNet18(num_classes)


ARCHS: dict[str, Callable[[int, str | Path | None], nn.Module]] = {
    "preact_resnet18": _preact,
    "resnet18": lambda num_classes, weights: torchvision_resnet("resnet18", num_classes, weights),
    "resnet50": lambda num_classes, weights: torchvision_resnet("resnet50", num_classes, weights),
}


def build_classifier(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network of the ``model`` section (``arch``, one of :data:`ARCHS`; local ``weights``).

    Example:
        >>> from mlbseg.cls.config import ModelConfig
        >>> build_classifier(ModelConfig(arch="preact_resnet18"), 10).linear.out_features
        10
    """
    if cfg.arch not in ARCHS:
        raise UserError(f"model.arch: unknown {cfg.arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[cfg.arch](num_classes, cfg.weights)
