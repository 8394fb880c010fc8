"""``magnitude_prune``: keep each update's largest entries, then a weighted sum.

Each ``ΔW_i`` keeps its top ``density`` fraction of entries by magnitude (no rescale, as in
PEFT's ``magnitude_prune``); ``ΔW = Σ w_i ΔW_i``. Re-factorised to ``--rank`` like ``ties``.
"""

from adaptkit_strategies.dense import DenseStrategy


def MagnitudePrune() -> DenseStrategy:
    """``magnitude_prune`` as a :class:`~adaptkit_strategies.dense.DenseStrategy` configuration."""
    return DenseStrategy(
        "magnitude_prune",
        "keep each update's largest-magnitude entries, then weighted sum",
        sparsify="magnitude",
        consensus=False,
        normalize=None,
    )
