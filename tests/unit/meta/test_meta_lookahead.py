"""The virtual SGD step replicates ``torch.optim.SGD``; the ε-sensitivity factor is its exact derivative.

Adam and AdamW are tested in test_meta_adam.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlbseg.meta.lookahead import SGDSlot, eps_sensitivity, optimizer_slots, sgd_update, virtual_step

# torch loads its JVP decompositions with torch.jit.script on first use of forward-mode AD.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def slot_of(optimizer: torch.optim.SGD, param: torch.Tensor) -> SGDSlot:
    model = nn.Module()
    model.register_parameter("p", param)
    return optimizer_slots(model, optimizer)["p"]


def test_sgd_update_equals_the_real_step_bit_for_bit(sgd_kwargs):
    generator = torch.Generator().manual_seed(1)
    param = nn.Parameter(torch.randn(5, 3, generator=generator))
    optimizer = torch.optim.SGD([param], **sgd_kwargs)
    for _ in range(3):  # the first step creates the momentum buffer, the later ones use it
        param.grad = torch.randn(5, 3, generator=generator)
        expected = sgd_update(param.detach().clone(), param.grad, slot_of(optimizer, param))
        optimizer.step()
        assert torch.equal(expected, param.detach())


@pytest.mark.parametrize("with_buffer", [False, True])
def test_eps_sensitivity_is_the_derivative_of_the_update_along_a_cost_gradient(sgd_kwargs, with_buffer):
    generator = torch.Generator().manual_seed(2)
    param = nn.Parameter(torch.randn(4, dtype=torch.float64, generator=generator))
    optimizer = torch.optim.SGD([param], **sgd_kwargs)
    if with_buffer:
        param.grad = torch.randn(4, dtype=torch.float64, generator=generator)
        optimizer.step()
    slot = slot_of(optimizer, param)
    base_grad, cost_grad = torch.randn(2, 4, dtype=torch.float64, generator=generator)

    def update(eps: torch.Tensor) -> torch.Tensor:
        return sgd_update(param.detach(), base_grad + eps * cost_grad, slot)

    _, tangent = torch.func.jvp(
        update, (torch.zeros((), dtype=torch.float64),), (torch.ones((), dtype=torch.float64),)
    )
    torch.testing.assert_close(tangent, -eps_sensitivity(slot) * cost_grad, rtol=1e-14, atol=0)


def test_eps_sensitivity_of_the_reference_setting_is_the_learning_rate():
    """docs/reference.md §1.4: with a live buffer and no dampening, ∂θ̂/∂ε_i = −η ∇ℓ_i."""
    slot = SGDSlot(
        lr=0.03, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False, buffer=torch.ones(1)
    )
    assert eps_sensitivity(slot) == 0.03


def test_virtual_step_moves_a_parameter_with_a_zero_gradient_but_not_one_without_gradient():
    slot = SGDSlot(
        lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=False, buffer=torch.ones(2)
    )
    params = {"used": torch.ones(2), "unused": torch.ones(2)}
    stepped = virtual_step(params, {"used": torch.zeros(()), "unused": None}, {"used": slot, "unused": slot})
    torch.testing.assert_close(stepped["used"], torch.full((2,), 1 - 0.5 * (0.9 + 0.1)))
    assert stepped["unused"] is params["unused"]


def test_optimizer_slots_read_per_group_settings_and_skip_frozen_or_foreign_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1), nn.Linear(1, 1))
    model[1].bias.requires_grad_(False)
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters(), "momentum": 0.5}],
        lr=0.2,
        weight_decay=1e-3,
    )
    slots = optimizer_slots(model, optimizer)
    assert sorted(slots) == ["0.bias", "0.weight", "1.weight"]  # 1.bias frozen, model[2] not optimised
    assert slots["0.weight"] == SGDSlot(0.1, 0.0, 0.0, 1e-3, False, None)
    assert slots["1.weight"].lr == 0.2
    assert slots["1.weight"].momentum == 0.5


def test_optimizer_slots_reject_other_optimizers_and_maximize():
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match=r"torch\.optim\.AdamW; got Adagrad"):
        optimizer_slots(model, torch.optim.Adagrad(model.parameters()))
    with pytest.raises(ValueError, match="SGD with maximize=False"):
        optimizer_slots(model, torch.optim.SGD(model.parameters(), lr=0.1, maximize=True))
