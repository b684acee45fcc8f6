"""Both methods against the reference computation, written with ``higher`` as the authors' code does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.meta import bootstrap_weights

higher = pytest.importorskip("higher")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def per_element(loss: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, targets, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def reference_weights(case, extra_loss=None):
    """The reference's weights: higher's differentiable SGD, then the 'org' normaliser.

    As docs/reference.md §1.3 step 4 (classification) and §6.9 steps 2-4 (segmentation).
    """
    with higher.innerloop_ctx(case.model, case.optimizer) as (fmodel, diffopt):
        logits = fmodel(case.inputs)
        costs = torch.stack(
            [per_element(case.loss, logits, case.noisy), per_element(case.loss, logits, case.pseudo)], dim=1
        )
        eps = torch.zeros_like(costs, requires_grad=True)
        virtual_loss = (eps * costs).sum()
        if extra_loss is not None:
            virtual_loss = virtual_loss + extra_loss(logits)
        diffopt.step(virtual_loss)
        meta_loss = per_element(case.loss, fmodel(case.meta_inputs), case.meta_targets).mean()
        (grad_eps,) = torch.autograd.grad(meta_loss, eps)
    weights = torch.clamp(-grad_eps, min=0)
    weights = weights / (weights.sum() + 1e-10)
    return weights[:, 0], weights[:, 1]


def consistency(logits: torch.Tensor) -> torch.Tensor:
    probs = logits.sigmoid()
    return (probs - probs.flip(-1)).pow(2).mean()


def softmax_consistency(logits: torch.Tensor) -> torch.Tensor:
    """A K-class segmentation's consistency term: MSE of the softmax maps and their mirror image."""
    probs = logits.softmax(dim=1)
    return (probs - probs.flip(-1)).pow(2).mean()


@pytest.mark.parametrize("method", ["forward", "lookahead"])
@pytest.mark.parametrize(
    ("kind", "extra_loss"),
    [("seg", None), ("seg", consistency), ("cls", None), ("seg_ce", None), ("seg_ce", softmax_consistency)],
)
def test_weights_match_higher_in_the_reference_setting(case_factory, kind, extra_loss, method):
    case = case_factory(kind, "momentum_wd", steps=3)  # SGD momentum 0.9, wd 5e-4, live buffers
    assert all("momentum_buffer" in state for state in case.optimizer.state.values())
    expected_alpha, expected_beta = reference_weights(case, extra_loss)
    assert expected_alpha.max() > 0

    alpha, beta = bootstrap_weights(*case.call_args(), loss=case.loss, method=method, extra_loss=extra_loss)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(beta, expected_beta, rtol=1e-6, atol=1e-12)
