"""Contract kits for plugin authors: run them against your plugin in your own tests.

::

    from adaptkit.testing import check_backend, check_exporter, check_strategy

    def test_my_strategy_contract():
        check_strategy(MyStrategy())

    def test_my_backend_contract(tmp_path):
        check_backend(MyBackend(), tmp_path)

    def test_my_exporter_contract(tmp_path):
        check_exporter(MyExporter(), tmp_path)

A failed check raises ``AssertionError`` saying which property broke. adaptkit's own suite runs
the kits over every builtin strategy, backend and exporter.
"""

from __future__ import annotations

from adaptkit.testing.backends import (
    check_backend,
    check_ddp,
    check_extract,
    check_learns,
    check_options,
    check_prepare,
    check_processes,
    check_reload,
    check_resume,
    check_round_trip,
    check_shard,
    counting_records,
    tiny_causal_lm,
)
from adaptkit.testing.exporters import (
    check_atomic,
    check_declared,
    check_exporter,
    check_help,
    check_refusals,
    check_report,
    export_in_process,
    kit_workspace,
    run_export_cli,
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
    "check_atomic",
    "check_backend",
    "check_ddp",
    "check_declared",
    "check_determinism",
    "check_exporter",
    "check_extract",
    "check_help",
    "check_identity",
    "check_learns",
    "check_linearity",
    "check_options",
    "check_prepare",
    "check_processes",
    "check_rank_bound",
    "check_refusals",
    "check_reload",
    "check_report",
    "check_resume",
    "check_round_trip",
    "check_shard",
    "check_strategy",
    "check_symmetry",
    "check_zero_weight",
    "counting_records",
    "export_in_process",
    "kit_workspace",
    "random_adapter",
    "relative_difference",
    "run_export_cli",
    "tiny_causal_lm",
]
