"""The GPU path of the segmentation step: torch.compile for the real steps, bf16 autocast beside fp32 weights.

``train.compile`` wraps the model for the real steps only; on the CPU the first compilation takes about
half a minute, hence ``slow``. The AMP test needs CUDA (bf16 autocast), hence ``gpu``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlbseg.seg.config import DataConfig, MethodConfig, ViewsConfig
from mlbseg.seg.step import SegmentationStep

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

METHOD = MethodConfig(
    name="mlbseg", meta_batch_size=1, consistency_weight=1.0, views=ViewsConfig(zoom_pads=(2, 4))
)


def _tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)
    )


def _step(model: nn.Module, device: str, amp_dtype=None, compile_model=False) -> SegmentationStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    return SegmentationStep(
        model,
        optimizer,
        method=METHOD,
        data=DataConfig(),
        grad_clip_norm=0.2,
        generator=generator,
        amp_dtype=amp_dtype,
        compile_model=compile_model,
    )


def _slices(count: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(count)
    images = torch.randn(count, 1, size, size, generator=generator)
    masks = (torch.rand(count, 1, size, size, generator=generator) > 0.6).float()
    return images.to(device), masks.to(device), masks.to(device)


@pytest.mark.slow
def test_compiled_real_steps_match_the_eager_ones():
    torch.manual_seed(0)
    eager_model = _tiny_net()
    compiled_model = _tiny_net()
    compiled_model.load_state_dict(eager_model.state_dict())
    eager, compiled = _step(eager_model, "cpu"), _step(compiled_model, "cpu", compile_model=True)
    assert compiled.forward_model is not compiled.model  # the meta engine keeps the eager module
    for _ in range(2):  # the second iteration runs with momentum buffers
        results = []
        for step in (eager, compiled):
            batch, meta = step.expand(*_slices(2, 16, "cpu")), step.expand(*_slices(1, 16, "cpu"))
            results.append({name: float(value) for name, value in step(batch, meta, True).items()})
        assert results[1] == pytest.approx(results[0], rel=1e-4)
    for actual, expected in zip(compiled_model.parameters(), eager_model.parameters(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)


def _relative_l1(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().sum() / expected.abs().sum())


@pytest.mark.gpu
def test_meta_weights_under_the_bf16_step_are_the_fp32_ones():
    """With bf16 autocast for the real forwards the meta engine still computes in float32."""
    import segmentation_models_pytorch as smp

    if not torch.cuda.is_bf16_supported():
        pytest.skip("bf16 not supported on this GPU")
    torch.manual_seed(0)
    model = smp.UnetPlusPlus(
        "resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(16, 8, 4),
        in_channels=1,
        classes=1,
    )
    model = model.cuda().to(memory_format=torch.channels_last)
    amp, fp32 = _step(model, "cuda", amp_dtype=torch.bfloat16), _step(model, "cuda")
    batch, meta = amp.expand(*_slices(2, 32, "cuda")), amp.expand(*_slices(1, 32, "cuda"))
    extra = fp32.extra_loss(batch)
    probs_amp, probs_fp32 = amp.probabilities(batch.images), fp32.probabilities(batch.images)
    assert 0 < float((probs_amp - probs_fp32).abs().max()) < 0.05  # autocast is active, and close
    same_pseudo = (
        amp.meta_weights(batch, meta, probs_fp32, extra),
        fp32.meta_weights(batch, meta, probs_fp32, extra),
    )
    assert same_pseudo[0].alpha.dtype == torch.float32
    for key in ("alpha", "beta"):
        assert _relative_l1(getattr(same_pseudo[0], key), getattr(same_pseudo[1], key)) < 1e-3
    own_pseudo = amp.meta_weights(batch, meta, probs_amp, extra)
    # α's scores do not depend on the pseudo-label; only the normaliser's total (over α and β) does
    alpha_amp, alpha_fp32 = own_pseudo.alpha, same_pseudo[1].alpha
    assert _relative_l1(alpha_amp / alpha_amp.sum(), alpha_fp32 / alpha_fp32.sum()) < 1e-3
