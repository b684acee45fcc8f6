"""A ``bootstrap_weights`` call changes nothing: parameters, grads, BN statistics, optimiser state."""

from __future__ import annotations

import copy

import pytest
import torch

from mlbseg.meta import bootstrap_weights

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def snapshot(case) -> dict:
    return {
        "params": {name: p.detach().clone() for name, p in case.model.named_parameters()},
        "grads": {
            name: None if p.grad is None else p.grad.clone() for name, p in case.model.named_parameters()
        },
        "buffers": {name: b.clone() for name, b in case.model.named_buffers()},
        "optimizer": copy.deepcopy(case.optimizer.state_dict()),
        "training": case.model.training,
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    for group in ("params", "buffers"):
        assert before[group].keys() == after[group].keys()
        for name, tensor in before[group].items():
            assert torch.equal(tensor, after[group][name]), f"{group} {name} changed"
    for name, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][name] is None), f"grad of {name} appeared or vanished"
        assert grad is None or torch.equal(grad, after["grads"][name]), f"grad of {name} changed"
    assert before["optimizer"]["param_groups"] == after["optimizer"]["param_groups"]
    assert before["optimizer"]["state"].keys() == after["optimizer"]["state"].keys()
    for index, state in before["optimizer"]["state"].items():  # SGD: momentum_buffer; Adam: step, moments
        assert state.keys() == after["optimizer"]["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(value, after["optimizer"]["state"][index][key]), f"state {index} {key} changed"


@pytest.mark.parametrize("method", ["forward", "lookahead"])
@pytest.mark.parametrize("setting", ["nesterov_wd", "adam_wd", "adamw"])
@pytest.mark.parametrize("kind", ["seg", "cls"])
def test_call_leaves_model_and_optimizer_untouched(case_factory, kind, setting, method):
    case = case_factory(kind, setting, steps=2)
    assert case.optimizer.state
    first = next(case.model.parameters())
    first.grad = torch.ones_like(first)  # a stale grad must survive; the others stay None
    before = snapshot(case)

    alpha, beta = bootstrap_weights(
        *case.call_args(), loss=case.loss, method=method, extra_loss=lambda logits: logits.pow(2).mean()
    )

    assert_same(before, snapshot(case))
    assert alpha.shape == beta.shape == case.noisy.shape
    assert not alpha.requires_grad
    assert not beta.requires_grad
    assert (alpha >= 0).all()
    assert (beta >= 0).all()


def test_bn_running_stats_would_change_without_the_buffer_copies(case_factory):
    """Guards the test above: a plain train-mode forward does move the statistics it checks."""
    case = case_factory("seg", "momentum_wd")
    before = case.model.enc[1].running_mean.clone()
    case.model(case.inputs)
    assert not torch.equal(before, case.model.enc[1].running_mean)
