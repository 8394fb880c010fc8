"""``dare_linear``: DARE drop-and-rescale, then a weighted sum.

Each ``ΔW_i`` keeps an entry with probability ``density`` (seeded per target and input from
``--seed``), kept entries rescaled by ``1/density`` (``rescale=inverse_density``: paper and
PEFT) or so the L1 norm is unchanged (``rescale=l1``: mergekit); then
``ΔW = Σ w_i ΔW_i`` (divided by ``Σ w_i`` when ``normalize``). Yu et al., 2024,
https://arxiv.org/abs/2311.03099. Re-factorised to ``--rank`` like ``ties``.
"""

from adaptkit_strategies.dense import DenseStrategy


def DareLinear() -> DenseStrategy:
    """``dare_linear`` as a :class:`~adaptkit_strategies.dense.DenseStrategy` configuration."""
    return DenseStrategy(
        "dare_linear",
        "DARE random drop + rescale, then weighted sum (seeded, reproducible)",
        sparsify="dare",
        consensus=False,
        normalize=False,
    )
