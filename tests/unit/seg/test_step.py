"""SegmentationStep.expand: the five views for MLB-Seg's meta-weighted steps, none during warm-up."""

import pytest
import torch
from torch import nn

from mlbseg.seg.config import DataConfig, MethodConfig, ViewsConfig
from mlbseg.seg.step import SegmentationStep


def _step(name: str) -> SegmentationStep:
    model = nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method = MethodConfig(name=name, views=ViewsConfig(zoom_pads=(2, 4)))
    return SegmentationStep(
        model, optimizer, method=method, data=DataConfig(), grad_clip_norm=0.2, generator=torch.Generator()
    )


def _slices(count: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = torch.rand(count, 1, size, size)
    masks = (images > 0.5).float()
    return images, masks, masks.clone()


@pytest.mark.parametrize(
    ("name", "views", "expected"), [("mlbseg", True, 15), ("mlbseg", False, 3), ("l2rw", True, 3)]
)
def test_views_only_for_mlbseg_and_only_when_asked(name, views, expected):
    batch = _step(name).expand(*_slices(), views=views)
    assert batch.images.shape == batch.labels.shape == batch.reference.shape == (expected, 1, 16, 16)
    assert (batch.views is not None) == (expected == 15)


def test_without_views_the_slices_keep_their_labels_under_flip_and_rotation():
    images, masks, _ = _slices()
    batch = _step("mlbseg").expand(images, masks, masks.clone(), views=False)
    assert torch.equal(batch.labels, batch.reference)
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}


def test_has_reference_follows_the_slices_into_their_views():
    images, masks, _ = _slices(count=2)
    has_reference = torch.tensor([True, False])
    batch = _step("mlbseg").expand(images, masks, masks.clone(), has_reference=has_reference)
    assert batch.has_reference.tolist() == [True] * 5 + [False] * 5  # sample-major, like the views
    plain = _step("mlbseg").expand(images, masks, masks.clone(), has_reference=has_reference, views=False)
    assert plain.has_reference is has_reference
    assert _step("mlbseg").expand(images, masks, masks.clone()).has_reference is None
