"""Per-element costs and their closed-form tangents against autograd's forward mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.meta.costs import get_costs, meta_loss

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

GENERATOR_SEED = 3


def random_case(loss: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, a tangent direction for them, and targets, in float64."""
    generator = torch.Generator().manual_seed(GENERATOR_SEED)
    shape = (4, 1, 5, 5) if loss == "bce" else (6, 3)
    logits, direction = torch.randn(2, *shape, dtype=torch.float64, generator=generator)
    if loss == "bce":
        targets = (torch.rand(shape, generator=generator) > 0.5).double()
    else:
        targets = torch.randint(0, 3, (6,), generator=generator)
    return logits, direction, targets


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_closed_form_tangent_equals_the_jvp_of_the_costs(loss):
    costs = get_costs(loss)
    logits, direction, targets = random_case(loss)
    _, expected = torch.func.jvp(lambda z: costs.elementwise(z, targets), (logits,), (direction,))
    tangent = costs.tangent(logits, direction, targets)
    assert tangent.shape == targets.shape
    torch.testing.assert_close(tangent, expected, rtol=1e-12, atol=1e-14)


def test_costs_are_the_torch_losses_and_meta_loss_their_mean():
    logits, _, targets = random_case("bce")
    bce = get_costs("bce")
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(bce.elementwise(logits, targets), expected)
    torch.testing.assert_close(meta_loss(bce, logits, targets), expected.mean())
    logits, _, targets = random_case("ce")
    torch.testing.assert_close(meta_loss(get_costs("ce"), logits, targets), F.cross_entropy(logits, targets))


def test_ce_supports_per_pixel_class_maps():
    generator = torch.Generator().manual_seed(GENERATOR_SEED)
    logits, direction = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 3, (2, 4, 4), generator=generator)
    ce = get_costs("ce")
    _, expected = torch.func.jvp(lambda z: ce.elementwise(z, targets), (logits,), (direction,))
    torch.testing.assert_close(ce.tangent(logits, direction, targets), expected)


def test_mismatched_shapes_and_unknown_loss_are_clear_errors():
    with pytest.raises(ValueError, match=r"targets shaped like the logits \(2, 1, 4, 4\)"):
        get_costs("bce").elementwise(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"logits \[N, C, \.\.\.\] and class-index targets \[N, \.\.\.\]"):
        get_costs("ce").elementwise(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Unknown loss 'mse'; choose from \['bce', 'ce'\]"):
        get_costs("mse")
