"""Contract kits for plugin authors: run them against your plugin in your own tests.

::

    from adaptkit.testing import check_backend, check_strategy

    def test_my_strategy_contract():
        check_strategy(MyStrategy())

    def test_my_backend_contract(tmp_path):
        check_backend(MyBackend(), tmp_path)

A failed check raises ``AssertionError`` saying which property broke. adaptkit's own suite runs
both kits over every builtin strategy and backend.
"""

from __future__ import annotations

from adaptkit.testing.backends import (
    check_backend,
    check_ddp,
    check_extract,
    check_learns,
    check_options,
    check_prepare,
    check_reload,
    check_resume,
    check_round_trip,
    counting_records,
    tiny_causal_lm,
)
from adaptkit.testing.strategies import (
    check_determinism,
    check_identity,
    check_linearity,
    check_rank_bound,
    check_strategy,
    check_symmetry,
    check_zero_weight,
    random_adapter,
    relative_difference,
)

__all__ = [
    "check_backend",
    "check_ddp",
    "check_determinism",
    "check_extract",
    "check_identity",
    "check_learns",
    "check_linearity",
    "check_options",
    "check_prepare",
    "check_rank_bound",
    "check_reload",
    "check_resume",
    "check_round_trip",
    "check_strategy",
    "check_symmetry",
    "check_zero_weight",
    "counting_records",
    "random_adapter",
    "relative_difference",
    "tiny_causal_lm",
]
