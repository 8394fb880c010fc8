"""What baking does to one weight or bias, in one order for every bake (streamed or in memory).

An adapter may change a base tensor in three ways, applied in this order:

1. **replace** it whole: a saved module's parameter, a trained bias (PEFT ``modules_to_save``,
   ``bias: "all"``);
2. **replace rows** of it: trainable tokens, ``E[indices] ← values``;
3. **update** it: a LoRA target's ``W + ΔW`` (or DoRA's re-normalised weight), a LoRA bias's
   ``b + Δb``.

This is what PEFT computes unmerged: its ``ModulesToSaveWrapper`` and token adapter hold the
replaced tensor, and a LoRA layer adds its update to whatever its base computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from adaptkit.adapter import TrainableTokens

Update = Callable[["torch.Tensor"], "torch.Tensor"]


@dataclass
class TensorEdit:
    """Every change an adapter makes to one tensor (see the module docstring).

    Attributes:
        replace: The tensor replacing it whole, or ``None``.
        rows: Trainable tokens whose rows replace its rows.
        update: ``f(W) -> W'`` applied last (a LoRA update), or ``None``.
    """

    replace: torch.Tensor | None = None
    rows: list[TrainableTokens] = field(default_factory=list)
    update: Update | None = None

    @property
    def keeps_ties(self) -> bool:
        """Whether the change is one PEFT makes to a tied weight's partner too (token rows
        only): a head tied to this tensor then stays tied."""
        return self.replace is None and self.update is None

    def __call__(self, W: torch.Tensor) -> torch.Tensor:
        if self.replace is not None:
            W = self.replace.to(W.dtype)
        for tokens in self.rows:
            W = replace_rows(W, tokens)
        return self.update(W) if self.update is not None else W


def replace_rows(W: torch.Tensor, tokens: TrainableTokens) -> torch.Tensor:
    """``W`` with rows ``tokens.indices`` replaced by ``tokens.values`` (a new tensor)."""
    import torch

    index = torch.tensor(tokens.indices, dtype=torch.long, device=W.device)
    return W.index_copy(0, index, tokens.values.to(device=W.device, dtype=W.dtype))


def token_rows_problems(module: str, tokens: TrainableTokens, shape: tuple[int, ...]) -> list[str]:
    """Why ``tokens`` cannot replace rows of a ``shape`` table (empty when they can)."""
    where = f"{module}.trainable_tokens"
    if len(shape) != 2:
        return [f"{where}: {module} is not a 2-D table (shape {shape})"]
    problems = []
    if max(tokens.indices) >= shape[0]:
        problems.append(f"{where}: token id {max(tokens.indices)} is past the table's {shape[0]} rows")
    if tokens.values.shape[1] != shape[1]:
        problems.append(f"{where}: rows are {tokens.values.shape[1]} wide but the table's are {shape[1]}")
    return problems
