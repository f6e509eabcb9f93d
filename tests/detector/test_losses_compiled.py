"""``compiled(sigmoid_focal_loss)`` against the eager loss: values and gradients.

Compiling is the slow part, so one compiled callable serves the whole module, and the cases
are chosen to need few distinct graphs (each alpha kind / gamma / reduction combination is a
new graph; torch.compile silently runs eagerly past its recompile limit of 8 per function).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from detector.model.losses import Alpha, Reduction, compiled, sigmoid_focal_loss

FocalFn = Callable[..., Tensor]
K = 5


@pytest.fixture(scope="module")
def compiled_focal() -> FocalFn:
    return compiled(sigmoid_focal_loss)


def _inputs(rows: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, K, generator=gen) * 4
    targets = (torch.rand(rows, K, generator=gen) < 0.2).float()
    return logits, targets


def _value_and_grad(
    fn: FocalFn, logits: Tensor, targets: Tensor, alpha: Alpha, gamma: float, reduction: Reduction
) -> tuple[Tensor, Tensor]:
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, targets, alpha, gamma, reduction)
    # A fixed, non-uniform upstream gradient also checks the backward of reduction="none".
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
    (loss * upstream).sum().backward()
    assert x.grad is not None
    return loss.detach(), x.grad


def _assert_same(
    compiled_fn: FocalFn,
    logits: Tensor,
    targets: Tensor,
    alpha: Alpha,
    gamma: float,
    reduction: Reduction,
) -> None:
    value, grad = _value_and_grad(compiled_fn, logits, targets, alpha, gamma, reduction)
    ref_value, ref_grad = _value_and_grad(
        sigmoid_focal_loss, logits, targets, alpha, gamma, reduction
    )
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


# (alpha kind, gamma, reduction): 7 distinct graphs, under the recompile limit of 8.
CASES = [
    ("scalar", 2.0, "none"),
    ("scalar", 2.0, "mean"),
    ("scalar", 2.0, "sum"),
    ("scalar", 0.0, "sum"),
    ("per_class", 2.0, "sum"),
    ("per_class", 0.0, "none"),
    ("none", 2.0, "sum"),
]


def _alpha(kind: str) -> Alpha:
    if kind == "scalar":
        return 0.25
    if kind == "per_class":
        return torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    return None


@pytest.mark.parametrize(("alpha_kind", "gamma", "reduction"), CASES)
def test_compiled_matches_eager(
    compiled_focal: FocalFn, alpha_kind: str, gamma: float, reduction: Reduction
) -> None:
    logits, targets = _inputs()
    _assert_same(compiled_focal, logits, targets, _alpha(alpha_kind), gamma, reduction)


@pytest.mark.parametrize(("alpha_kind", "gamma", "reduction"), CASES)
def test_compiled_matches_eager_on_extreme_logits(
    compiled_focal: FocalFn, alpha_kind: str, gamma: float, reduction: Reduction
) -> None:
    # Every (logit, target) pair of +-100 and 0/1: saturated sigmoids, huge CE terms.
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0, 3.0]] * 2)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]])
    _assert_same(compiled_focal, logits, targets, _alpha(alpha_kind), gamma, reduction)


def test_compiled_handles_a_new_number_of_rows(compiled_focal: FocalFn) -> None:
    # dynamic=True: a different anchor count reuses the graph instead of failing.
    logits, targets = _inputs(rows=37, seed=1)
    _assert_same(compiled_focal, logits, targets, 0.25, 2.0, "sum")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler for Inductor")
def test_compiles_without_falling_back_to_eager() -> None:
    fn = compiled(sigmoid_focal_loss)
    logits, targets = _inputs(rows=16, seed=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        _value_and_grad(fn, logits, targets, 0.25, 2.0, "sum")  # a graph compiled above


def test_backend_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn: FocalFn, **_: object) -> FocalFn:
        def fail(*args: object, **kwargs: object) -> Tensor:
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    fn = compiled(sigmoid_focal_loss)
    logits, targets = _inputs(rows=8)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        value = fn(logits, targets, 0.25, 2.0, "sum")
    torch.testing.assert_close(value, sigmoid_focal_loss(logits, targets, 0.25, 2.0, "sum"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then quietly eager
        fn(logits, targets, 0.25, 2.0, "sum")


def test_bad_arguments_raise_and_keep_the_compiled_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counting_compile(fn: FocalFn, **_: object) -> FocalFn:
        def run(*args: object, **kwargs: object) -> Tensor:
            calls.append("compiled")
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", counting_compile)
    fn = compiled(sigmoid_focal_loss)
    logits, targets = _inputs(rows=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "torch.compile failed": the caller is at fault
        with pytest.raises(ValueError, match="reduction"):
            fn(logits, targets, 0.25, 2.0, "bogus")
        fn(logits, targets, 0.25, 2.0, "sum")
    assert calls == ["compiled", "compiled"]
