"""The weight average against its recursion, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.engine.ema import WeightEma, ramped_decay


def test_the_decay_ramps_up_to_its_target() -> None:
    assert ramped_decay(decay=0.999, ramp_iters=100, updates=1) == pytest.approx(
        0.999 * (1 - math.exp(-0.01))
    )
    assert ramped_decay(decay=0.999, ramp_iters=100, updates=10_000) == pytest.approx(0.999)


def test_the_average_follows_its_recursion_for_weights_and_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEma(model, decay=0.9, ramp_iters=3)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    for step in range(1, 8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(4, 3))  # moves the running statistics and the step count
        ema.update(model)
        d = 0.9 * (1 - math.exp(-step / 3))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v.double()
            else:
                expected[k] = v.clone()
    assert ema.updates == 7
    got = ema.module.state_dict()
    assert set(got) == set(expected)
    for k, v in got.items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(v, expected[k].to(v.dtype)), k
    # The trained model is left alone: the average is a copy.
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])


def test_a_restored_average_continues_as_the_uninterrupted_one() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    whole = WeightEma(model, decay=0.99, ramp_iters=5)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        whole.update(model)
    resumed = WeightEma(model, decay=0.99, ramp_iters=5)
    resumed.restore(whole.module.state_dict(), updates=whole.updates)
    for _ in range(2):
        with torch.no_grad():
            model.weight.add_(1.0)
        whole.update(model)
        resumed.update(model)
    assert torch.equal(whole.module.state_dict()["weight"], resumed.module.state_dict()["weight"])
