import math

import pytest
import torch

from adaptkit import LoraPair
from adaptkit.errors import InvalidAdapterError


def _factors(r=4, out_f=12, in_f=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g)


@pytest.mark.parametrize(
    ("scaling", "alpha", "expected"),
    [("alpha/r", 8.0, 8.0 / 4), ("alpha/sqrt(r)", 8.0, 8.0 / math.sqrt(4))],
)
def test_scale_and_delta_match_float64_reference(scaling, alpha, expected):
    A, B = _factors()
    pair = LoraPair(A=A, B=B, alpha=alpha, scaling=scaling)
    assert pair.scale == pytest.approx(expected, rel=0, abs=1e-15)
    ref = expected * (B.double() @ A.double())
    torch.testing.assert_close(pair.delta(torch.float64), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(pair.delta().double(), ref, rtol=1e-6, atol=1e-6)
    assert pair.delta().dtype == torch.float32


def test_explicit_scale():
    A, B = _factors()
    pair = LoraPair.with_scale(A, B, -0.25)
    assert pair.scale == -0.25 and pair.alpha is None
    torch.testing.assert_close(pair.delta(torch.float64), -0.25 * (B.double() @ A.double()))


def test_delta_norm_from_factors_equals_dense_norm():
    A, B = _factors(r=5, out_f=30, in_f=20, seed=3)
    pair = LoraPair(A=A, B=B, alpha=3.0)
    dense = torch.linalg.matrix_norm(pair.delta(torch.float64)).item()
    assert pair.delta_norm() == pytest.approx(dense, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": torch.zeros(4, 10), "B": torch.zeros(12, 3), "alpha": 1.0}, "rank mismatch"),
        ({"A": torch.zeros(0, 10), "B": torch.zeros(12, 0), "alpha": 1.0}, "rank must be >= 1"),
        (
            {"A": torch.zeros(4, 10, dtype=torch.int32), "B": torch.zeros(12, 4), "alpha": 1.0},
            "dtype",
        ),
        ({"A": torch.zeros(4), "B": torch.zeros(12, 4), "alpha": 1.0}, "must be 2-D"),
        (
            {"A": torch.zeros(4, 10), "B": torch.zeros(12, 4), "alpha": float("nan")},
            "alpha must be",
        ),
        ({"A": torch.zeros(4, 10), "B": torch.zeros(12, 4)}, "alpha must be"),
        (
            {"A": torch.zeros(4, 10), "B": torch.zeros(12, 4), "alpha": 1.0, "scaling": "alpha"},
            "scaling",
        ),
        (
            {"A": torch.zeros(4, 10), "B": torch.zeros(12, 4), "scaling": "explicit"},
            "explicit scaling",
        ),
    ],
)
def test_structural_problems_are_rejected(kwargs, message):
    with pytest.raises(InvalidAdapterError, match=message):
        LoraPair(**kwargs)


def test_check_finite_names_the_factor():
    A, B = _factors()
    B[0, 0] = float("inf")
    assert LoraPair(A=A, B=B, alpha=1.0).check_finite() == ["lora_B.weight"]
