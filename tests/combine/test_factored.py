"""Factored strategies against a float64 reference: Σ w_i s_i B_i A_i, exactly."""

import math

import pytest
import torch

from adaptkit import WeightedAdapter
from adaptkit.adapter import Adapter
from adaptkit.combine import combine
from adaptkit.errors import AdaptkitError, InvalidAdapterError
from adaptkit.lora import LoraPair
from adaptkit.rank import RankRequest

T = "model.layers.0.mlp.up_proj"


def pair(seed, r, alpha, scaling="alpha/r", out_f=48, in_f=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return LoraPair(
        A=(torch.randn(r, in_f, generator=g) / in_f**0.5).to(dtype),
        B=torch.randn(out_f, r, generator=g).to(dtype),
        alpha=alpha,
        scaling=scaling,
    )


def inputs_mixed():
    """Mixed ranks, alpha != r, rsLoRA, bf16 — and a negative weight."""
    pairs = [
        pair(0, 4, 16.0),
        pair(1, 8, 8.0, "alpha/sqrt(r)"),
        pair(2, 2, 1.0, dtype=torch.bfloat16),
    ]
    weights = [1.0, -0.5, 2.0]
    return pairs, weights


def reference(pairs, weights):
    return sum(w * p.scale * (p.B.double() @ p.A.double()) for p, w in zip(pairs, weights, strict=True))


def run(pairs, weights, strategy, **kw):
    ins = [
        WeightedAdapter(Adapter({T: p}), w, f"in{i}")
        for i, (p, w) in enumerate(zip(pairs, weights, strict=True))
    ]
    res = combine(ins, strategy, **kw)
    return res.adapter.targets[T], res.report[0]


def rel(x, ref):
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("strategy", ["linear", "cat"])
def test_exact_weighted_sum(strategy):
    pairs, weights = inputs_mixed()
    out, report = run(pairs, weights, strategy)
    ref = reference(pairs, weights)
    assert rel(out.delta(torch.float64), ref) < 1e-6
    assert report.relative_error == 0.0 or report.relative_error < 1e-12
    assert out.scale == 1.0
    # The adapter actually changes something: the reference is far from zero.
    assert float(ref.norm()) > 1.0


def test_cat_rank_is_sum_of_ranks_and_refuses_rank():
    pairs, weights = inputs_mixed()
    out, _ = run(pairs, weights, "cat")
    assert out.rank == 4 + 8 + 2
    with pytest.raises(AdaptkitError, match="takes no --rank"):
        run(pairs, weights, "cat", rank=4)


def test_linear_at_rank_k_is_the_optimal_truncation():
    pairs, weights = inputs_mixed()
    ref = reference(pairs, weights)
    U, S, Vh = torch.linalg.svd(ref)
    for k in (1, 3, 6):
        best = (U[:, :k] * S[:k]) @ Vh[:k]
        out, report = run(pairs, weights, "linear", rank=k)
        assert out.rank == k
        assert float((out.delta(torch.float64) - best).norm() / ref.norm()) < 1e-6
        optimal_err = math.sqrt(float((S[k:] ** 2).sum() / (S**2).sum()))
        assert report.relative_error == pytest.approx(optimal_err, rel=1e-6)
        # float32 factorisation: energy agrees to float32 precision
        assert report.energy == pytest.approx(1 - optimal_err**2, rel=1e-6)


def test_linear_without_rank_drops_only_numerically_zero_directions():
    p = pair(5, 4, 4.0)
    out, _ = run([p, p], [1.0, 1.0], "linear")
    assert out.rank == 4  # two copies of a rank-4 update sum to rank 4, not 8
    assert rel(out.delta(torch.float64), 2 * p.delta(torch.float64)) < 1e-6


def test_task_negation_cancels():
    p = pair(5, 4, 4.0)
    q = pair(6, 3, 6.0)
    out, _ = run([p, q, p], [1.0, 1.0, -1.0], "linear")
    assert rel(out.delta(torch.float64), q.delta(torch.float64)) < 1e-6


def test_auto_energy_picks_smallest_rank():
    pairs, weights = inputs_mixed()
    S = torch.linalg.svdvals(reference(pairs, weights))
    energy = torch.cumsum(S**2, 0) / (S**2).sum()
    for E in (0.5, 0.9, 0.99):
        expected = int((energy < E).sum()) + 1
        out, report = run(pairs, weights, "linear", rank=f"auto:{E}")
        assert out.rank == expected and report.energy >= E


def test_svd_default_rank_and_correct_scaling():
    """PEFT's svd multiplies by s_i twice when alpha != r (and again by sqrt(r) for rsLoRA)."""
    pairs, weights = inputs_mixed()
    ref = reference(pairs, weights)
    out, _ = run(pairs, weights, "svd")
    assert out.rank == 8
    U, S, Vh = torch.linalg.svd(ref)
    best = (U[:, :8] * S[:8]) @ Vh[:8]
    assert float((out.delta(torch.float64) - best).norm() / ref.norm()) < 1e-6
    double_scaled = sum(
        w * p.scale**2 * (p.B.double() @ p.A.double()) for p, w in zip(pairs, weights, strict=True)
    )
    assert rel(out.delta(torch.float64), double_scaled) > 0.5


def test_slerp_matches_dense_formula():
    a, b = pair(0, 4, 8.0), pair(1, 6, 3.0, "alpha/sqrt(r)")
    da, db = a.delta(torch.float64), b.delta(torch.float64)
    for t in (0.0, 0.3, 1.0):
        out, _ = run([a, b], [1.0, 1.0], "slerp", params={"t": t})
        cos = float((da * db).sum() / (da.norm() * db.norm()))
        theta = math.acos(cos)
        ref = (math.sin((1 - t) * theta) * da + math.sin(t * theta) * db) / math.sin(theta)
        assert rel(out.delta(torch.float64), ref) < 1e-6


def test_slerp_parallel_falls_back_to_lerp():
    a = pair(0, 4, 8.0)
    out, report = run([a, a], [1.0, 3.0], "slerp", params={"t": 0.25})
    assert rel(out.delta(torch.float64), (0.75 + 0.75) * a.delta(torch.float64)) < 1e-6
    assert "parallel" in report.note


def test_missing_target_counts_as_zero_and_intersect_drops_it():
    a = Adapter({"x": pair(0, 2, 2.0), "y": pair(1, 2, 2.0)})
    b = Adapter({"x": pair(2, 3, 3.0)})
    res = combine([WeightedAdapter(a, 1.0, "a"), WeightedAdapter(b, 2.0, "b")], "linear")
    assert set(res.adapter.targets) == {"x", "y"}
    ref_y = a.targets["y"].delta(torch.float64)
    assert rel(res.adapter.targets["y"].delta(torch.float64), ref_y) < 1e-6
    res = combine([WeightedAdapter(a, 1.0, "a"), WeightedAdapter(b, 2.0, "b")], "linear", intersect=True)
    assert set(res.adapter.targets) == {"x"}


def test_shape_clash_is_an_error_naming_the_target():
    a = Adapter({"x": pair(0, 2, 2.0)})
    b = Adapter({"x": pair(1, 2, 2.0, out_f=10)})
    with pytest.raises(InvalidAdapterError, match=r"x: shape clash: 'b' has 10×32 but 'a' has 48×32"):
        combine([WeightedAdapter(a, 1.0, "a"), WeightedAdapter(b, 1.0, "b")], "linear")


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0, math.nan], "not a finite number"), ([0.0, 0.0], "all weights are zero")],
)
def test_bad_weights(weights, message):
    a = Adapter({"x": pair(0, 2, 2.0)})
    with pytest.raises(AdaptkitError, match=message):
        combine([WeightedAdapter(a, w, f"a{i}") for i, w in enumerate(weights)], "linear")


def test_provenance_records_the_run():
    pairs, weights = inputs_mixed()
    ins = [
        WeightedAdapter(Adapter({T: p}), w, f"in{i}")
        for i, (p, w) in enumerate(zip(pairs, weights, strict=True))
    ]
    res = combine(ins, "ties", params={"density": 0.3}, rank=4, seed=9)
    prov = res.adapter.provenance
    assert prov["combine"] == {
        "strategy": "ties",
        "params": {"density": 0.3, "variant": "peft", "sign_method": "total", "normalize": True},
        "rank": "4",
        "seed": 9,
        "intersect": False,
    }
    assert [i["weight"] for i in prov["inputs"]] == weights
    assert "torch" in prov["versions"]
    assert res.adapter.producer.component == "strategy:ties"


@pytest.mark.parametrize("bad", ["0", "auto:1.5", "auto:x", "sixteen", -3, True])
def test_rank_request_parse_errors(bad):
    with pytest.raises(AdaptkitError):
        RankRequest.parse(bad)


def test_rank_request_parse():
    assert RankRequest.parse("16") == RankRequest(k=16)
    assert RankRequest.parse("auto") == RankRequest(energy=0.99)
    assert RankRequest.parse("auto:0.9") == RankRequest(energy=0.9)
