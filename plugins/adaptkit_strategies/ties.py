"""``ties``: TIES-merging (Yadav et al., 2023, https://arxiv.org/abs/2306.01708).

On the dense updates ``ΔW_i = s_i B_i A_i`` (float32, row tiles):

1. **trim** — keep each input's top ``density`` fraction of entries by magnitude;
2. **elect** — per entry, a sign: of the summed values (``sign_method=total``) or of the
   summed signs (``frequency``);
3. **disjoint merge** — combine only the values agreeing with the elected sign:

   * ``variant=peft`` (PEFT; the paper at unit weights): elect on unweighted values,
     ``ΔW = Σ_{agree} w_i ΔW_i / #agree``;
   * ``variant=mergekit``: elect on weighted values ``w_i ΔW_i``,
     ``ΔW = Σ_{agree} w_i ΔW_i / Σ_{agree} w_i`` (``normalize=true``) or the plain sum.

The result is re-factorised to ``--rank`` (default: the largest input rank) with a seeded
randomised SVD; the report gives the exact relative error of that step.
"""

from adaptkit_strategies.dense import DenseStrategy


def Ties() -> DenseStrategy:
    """``ties`` as a :class:`~adaptkit_strategies.dense.DenseStrategy` configuration."""
    return DenseStrategy(
        "ties",
        "TIES: trim by magnitude, elect sign, disjoint merge (variants: peft, mergekit)",
        sparsify="magnitude",
        consensus=True,
        normalize=True,
    )
