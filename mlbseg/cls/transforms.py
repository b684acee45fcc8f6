"""Image transforms of the classification datasets (PIL image in, normalised float tensor [3, H, W] out).

Follows docs/reference.md §2–4, with two documented departures: CIFAR-100 is normalised with its own
statistics (the reference reuses CIFAR-10's, §7 item 17), and ISIC images are resized before the ±180°
rotation (docs/reference.md §7 item 25).
"""

from __future__ import annotations

from torchvision import transforms as T

# CIFAR-10 statistics as the reference uses them (its std is the mean per-image std, the common variant).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
# CIFAR-100 per-channel statistics over its 50 000 training images.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_STATS = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}

# ISIC: short side resized to this before rotating. Rotating the full-resolution image (up to 1024×1024, as
# the reference does) costs ~5× more, and at 448 the smallest RandomResizedCrop (30 % of the area) is still
# about 224 px wide, so the final 224×224 crop is not upsampled.
ISIC_PRE_RESIZE = 448


def cifar_transform(name: str, train: bool) -> T.Compose:
    """CIFAR transform; ``train`` (also used for the meta set): RandomCrop 32 pad 4 + horizontal flip.

    Args:
        name: ``cifar10`` or ``cifar100`` (selects the normalisation statistics).
        train: Augment (train and meta sets) or not (test set).
    """
    mean, std = CIFAR_STATS[name]
    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    return T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])


def clothing1m_transform(train: bool) -> T.Compose:
    """Clothing1M: Resize 256 (short side), then RandomCrop 224 + flip (train) or CenterCrop 224 (others)."""
    crop = [T.RandomCrop(224), T.RandomHorizontalFlip()] if train else [T.CenterCrop(224)]
    return T.Compose([T.Resize(256), *crop, T.ToTensor(), T.Normalize(CLOTHING1M_MEAN, CLOTHING1M_STD)])


def isic_transform(train: bool) -> T.Compose:
    """ISIC 2019 at 224×224 with ImageNet statistics.

    ``train`` (also the meta set): Resize(448) → flip → RandomRotation(±180°) → RandomResizedCrop(224,
    scale 0.3–1). Otherwise (test): Resize((224, 224)), which like the reference ignores the aspect ratio.
    """
    if train:
        geometry = [
            T.Resize(ISIC_PRE_RESIZE),
            T.RandomHorizontalFlip(),
            T.RandomRotation(180),
            T.RandomResizedCrop(224, scale=(0.3, 1.0)),
        ]
    else:
        geometry = [T.Resize((224, 224))]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
