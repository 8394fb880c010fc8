"""The adaptkit.testing contract kit, run over every registered strategy."""

import pytest

from adaptkit import testing
from adaptkit.plugins import load_registry

REGISTRY = load_registry()
STRATEGIES = [r.obj for r in REGISTRY.all("strategy")]


def test_builtin_strategies_are_all_registered():
    names = {s.name for s in STRATEGIES}
    assert {
        "linear",
        "cat",
        "svd",
        "slerp",
        "ties",
        "dare_linear",
        "dare_ties",
        "magnitude_prune",
    } <= names


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_contract(strategy):
    testing.check_strategy(strategy)


def test_kit_catches_a_broken_strategy():
    """The kit must fail on a strategy that ignores weights and scales."""
    from adaptkit.combine.strategy import MergeResult
    from adaptkit.lora import LoraPair

    class Sloppy:
        name = "sloppy"
        description = "sums B@A ignoring weights and alpha"
        params_schema = {"type": "object"}
        symmetric = True
        linear = True
        identity_params = {}

        def merge(self, inputs, ctx):
            import torch

            B = torch.cat([i.pair.B for i in inputs], dim=1)
            A = torch.cat([i.pair.A for i in inputs], dim=0)
            return MergeResult(pair=LoraPair(A=A, B=B, alpha=float(A.shape[0])))

    with pytest.raises(AssertionError, match="one adapter at weight 1 changed"):
        testing.check_identity(Sloppy())
    with pytest.raises(AssertionError, match="claims linear but 2x weights changed it"):
        testing.check_linearity(Sloppy())
