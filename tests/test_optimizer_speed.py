"""The multi-tensor optimizer step on CPU updates the parameters bit for bit as the per-parameter step."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lightning_retrieval.tasks import RetrievalTask
from lightning_retrieval.tasks.optimizers import MULTI_TENSOR_EQUAL, multi_tensor_on_cpu

SETTINGS = {
    torch.optim.Adam: {"lr": 1e-2},
    torch.optim.AdamW: {"lr": 1e-2, "weight_decay": 0.1},
    torch.optim.SGD: {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
}


def trained(kind, settings, wrap, steps=12):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(50, 8), (8,), (3, 5, 2)]]
    optimizer = kind(params, **settings)
    optimizer = multi_tensor_on_cpu(optimizer) if wrap else optimizer
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 10.0 ** -(step % 4)
            p.grad[0] = 0.0  # rows without gradient
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize("kind", MULTI_TENSOR_EQUAL, ids=lambda k: k.__name__)
def test_multi_tensor_step_equals_the_per_parameter_step_bit_for_bit(kind):
    assert set(MULTI_TENSOR_EQUAL) == set(SETTINGS)
    fast, optimizer = trained(kind, SETTINGS[kind], wrap=True)
    assert all(group["foreach"] is True for group in optimizer.param_groups)
    reference, plain = trained(kind, SETTINGS[kind], wrap=False)
    assert all(not group["foreach"] for group in plain.param_groups)
    for a, b in zip(fast, reference):
        assert torch.equal(a, b)


def test_explicit_settings_and_other_optimizers_are_left_alone():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert multi_tensor_on_cpu(torch.optim.Adam(params, foreach=False)).param_groups[0]["foreach"] is False
    assert multi_tensor_on_cpu(torch.optim.Adam(params, fused=True)).param_groups[0]["foreach"] is None
    assert "foreach" not in multi_tensor_on_cpu(torch.optim.LBFGS(params)).param_groups[0]
    assert multi_tensor_on_cpu(torch.optim.Adagrad(params)).param_groups[0]["foreach"] is None


def test_the_retrieval_task_configures_the_multi_tensor_step(movielens_dm):
    task = RetrievalTask(movielens_dm.feature_spec, 8, optimizer=partial(torch.optim.Adam, lr=1e-3))
    optimizer = task.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["foreach"] is True
