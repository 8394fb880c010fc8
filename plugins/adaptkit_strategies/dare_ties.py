"""``dare_ties``: DARE drop-and-rescale, then TIES sign election and disjoint merge.

Drops as in ``dare_linear`` (seeded per target and input), then elects signs and merges the
agreeing values exactly as ``ties`` does (``variant``: ``peft`` elects on unweighted values
and divides by the agreeing count; ``mergekit`` elects on weighted values and divides by the
agreeing weights). Re-factorised to ``--rank`` like ``ties``.
"""

from adaptkit_strategies.dense import DenseStrategy


def DareTies() -> DenseStrategy:
    """``dare_ties`` as a :class:`~adaptkit_strategies.dense.DenseStrategy` configuration."""
    return DenseStrategy(
        "dare_ties",
        "DARE random drop + rescale, then TIES sign election and disjoint merge",
        sparsify="dare",
        consensus=True,
        normalize=True,
    )
