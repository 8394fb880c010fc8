"""The merge-strategy contract kit: run it against your strategy in your own tests.

::

    from adaptkit.testing import check_strategy

    def test_my_strategy_contract():
        check_strategy(MyStrategy())

Each check builds small random adapters (mixed ranks, alphas and rsLoRA), runs
:func:`adaptkit.combine.combine` with the strategy object, and compares updates in float64.
A failed check raises ``AssertionError`` saying which property broke.

Checked properties:
    * identity — one adapter at weight 1 (with ``identity_params``) comes back unchanged;
    * zero weight — an adapter at weight 0 has no effect, whatever it holds;
    * symmetry — the inputs' order does not matter (if ``strategy.symmetric``);
    * linearity — doubling every weight doubles the result (if ``strategy.linear``);
    * determinism — the same seed gives bit-identical factors;
    * rank bound — the output rank never exceeds ``Σ r_i``, nor ``k`` when ``rank=k``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adaptkit.adapter import Adapter, WeightedAdapter
from adaptkit.combine import combine
from adaptkit.errors import AdaptkitError
from adaptkit.lora import LoraPair

__all__ = [
    "check_determinism",
    "check_identity",
    "check_linearity",
    "check_rank_bound",
    "check_strategy",
    "check_symmetry",
    "check_zero_weight",
    "random_adapter",
    "relative_difference",
]

_SHAPES = {"layers.0.q_proj": (24, 16), "layers.0.v_proj": (8, 16), "layers.1.down_proj": (16, 40)}


def random_adapter(seed: int, *, ranks: tuple[int, ...] = (4, 2, 3)) -> Adapter:
    """A small random adapter; scales differ per target (``alpha != r``, one rsLoRA target)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    targets = {}
    for i, (name, (out_f, in_f)) in enumerate(_SHAPES.items()):
        r = ranks[i % len(ranks)]
        targets[name] = LoraPair(
            A=torch.randn(r, in_f, generator=g) / in_f**0.5,
            B=torch.randn(out_f, r, generator=g),
            alpha=float(r + 1 + seed % 3),
            scaling="alpha/sqrt(r)" if i == 1 else "alpha/r",
        )
    return Adapter(targets=targets)


def relative_difference(x: Adapter, y: Adapter) -> float:
    """``max over targets of ||ΔW_x − ΔW_y||_F / max(||ΔW_y||_F, tiny)`` in float64."""
    import torch

    assert set(x.targets) == set(y.targets), f"targets differ: {set(x.targets) ^ set(y.targets)}"
    worst = 0.0
    for name, px in x.targets.items():
        dx, dy = px.delta(torch.float64), y.targets[name].delta(torch.float64)
        worst = max(worst, float((dx - dy).norm()) / max(float(dy.norm()), 1e-30))
    return worst


def _run(
    strategy: Any,
    adapters: list[tuple[Adapter, float, str]],
    params: Mapping[str, Any],
    **kwargs: Any,
) -> Adapter:
    inputs = [WeightedAdapter(adapter=a, weight=w, name=n) for a, w, n in adapters]
    return combine(inputs, strategy, params=params, **kwargs).adapter


def _two(strategy: Any) -> int:
    lo = getattr(strategy, "min_inputs", 1)
    return max(2, lo)


def check_identity(strategy: Any, *, tol: float = 1e-5) -> None:
    a = random_adapter(1)
    params = getattr(strategy, "identity_params", {})
    copies = [(a, 1.0, f"a{i}") for i in range(getattr(strategy, "min_inputs", 1))]
    got = _run(strategy, copies, params)
    diff = relative_difference(got, a)
    assert diff <= tol, f"{strategy.name}: one adapter at weight 1 changed by {diff:.3g}"


def check_zero_weight(strategy: Any, *, tol: float = 1e-5) -> None:
    a, b, c = random_adapter(1), random_adapter(2), random_adapter(3)
    n = _two(strategy)
    rest = [(random_adapter(10 + i), 1.0, f"x{i}") for i in range(n - 2)]
    with_b = _run(strategy, [(a, 1.0, "a"), *rest, (b, 0.0, "z")], {})
    with_c = _run(strategy, [(a, 1.0, "a"), *rest, (c, 0.0, "z")], {})
    diff = relative_difference(with_b, with_c)
    assert diff <= tol, f"{strategy.name}: an adapter at weight 0 changed the result by {diff:.3g}"


def check_symmetry(strategy: Any, *, tol: float = 1e-5) -> None:
    if not getattr(strategy, "symmetric", False):
        return
    a, b = random_adapter(1), random_adapter(2, ranks=(2, 5, 1))
    ab = _run(strategy, [(a, 0.7, "a"), (b, 1.3, "b")], {})
    ba = _run(strategy, [(b, 1.3, "b"), (a, 0.7, "a")], {})
    diff = relative_difference(ab, ba)
    assert diff <= tol, f"{strategy.name}: claims symmetric but input order changed it by {diff:.3g}"


def check_linearity(strategy: Any, *, tol: float = 1e-5) -> None:
    if not getattr(strategy, "linear", False):
        return
    a, b = random_adapter(1), random_adapter(2, ranks=(2, 5, 1))
    once = _run(strategy, [(a, 0.5, "a"), (b, -1.0, "b")], {})
    twice = _run(strategy, [(a, 1.0, "a"), (b, -2.0, "b")], {})
    doubled = Adapter(
        targets={n: LoraPair.with_scale(p.A, p.B, 2 * p.scale) for n, p in once.targets.items()}
    )
    diff = relative_difference(twice, doubled)
    assert diff <= tol, f"{strategy.name}: claims linear but 2x weights changed it by {diff:.3g}"


def check_determinism(strategy: Any) -> None:
    import torch

    a, b = random_adapter(1), random_adapter(2, ranks=(2, 5, 1))
    first = _run(strategy, [(a, 1.0, "a"), (b, 0.5, "b")], {}, seed=1234)
    second = _run(strategy, [(a, 1.0, "a"), (b, 0.5, "b")], {}, seed=1234)
    for name, p in first.targets.items():
        q = second.targets[name]
        assert torch.equal(p.A, q.A) and torch.equal(p.B, q.B), (
            f"{strategy.name}: same seed gave different factors for {name}"
        )


def check_rank_bound(strategy: Any) -> None:
    a, b = random_adapter(1), random_adapter(2, ranks=(2, 5, 1))
    pairs = [(a, 1.0, "a"), (b, 0.5, "b")]
    out = _run(strategy, pairs, {})
    for name, p in out.targets.items():
        total = a.targets[name].rank + b.targets[name].rank
        assert p.rank <= total, f"{strategy.name}: {name} has rank {p.rank} > Σ r_i = {total}"
    try:
        out = _run(strategy, pairs, {}, rank=2)
    except AdaptkitError:
        return  # the strategy refuses a rank request (e.g. cat); refusing is allowed
    for name, p in out.targets.items():
        assert p.rank <= 2, f"{strategy.name}: asked for rank 2, {name} has rank {p.rank}"


def check_strategy(strategy: Any) -> None:
    """Run every contract check against ``strategy``."""
    check_identity(strategy)
    check_zero_weight(strategy)
    check_symmetry(strategy)
    check_linearity(strategy)
    check_determinism(strategy)
    check_rank_bound(strategy)
