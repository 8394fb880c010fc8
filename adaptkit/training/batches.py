"""Batches and their loss: the pieces of training that need no backend, shared by the trainer
(:mod:`adaptkit.training.loop`), ``combine --tune`` and the demo.

* Data order: :func:`step_indices` gives each optimizer step's record indices, a pure function
  of ``(seed, step)`` (shuffled epochs, concatenated), so a resumed run sees the same batches.
* Padding: :func:`collate` right-pads records into ``(input_ids, mask)``; the mask marks loss
  targets (2), other real tokens (1) and padding (0).
* Loss: the causal-LM cross-entropy summed over target tokens,

      L_sum = Σ_{b,t : mask[b,t+1] = 2} −log softmax(logits[b,t])[ids[b,t+1]],

  (:func:`token_loss_sum`) and divided by :func:`target_tokens`, the count of those targets.
  Summing first and dividing once per step keeps a step's gradient independent of how it is
  split into micro-batches and processes; :func:`evaluate_loss` is the same mean, no grad.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch


def step_indices(n_records: int, per_step: int, steps: int, seed: int) -> StepOrder:
    """Record indices for every optimizer step: shuffled epochs, concatenated (computed a step at
    a time, so a long run costs no memory up front)."""
    return StepOrder(n_records, per_step, steps, seed)


class StepOrder(Sequence):
    """``order[step]``: the record indices of one optimizer step. The data order is the
    concatenation of one random permutation per epoch, each a pure function of
    ``(seed, epoch)``, so any step's records are known without the steps before it."""

    def __init__(self, n_records: int, per_step: int, steps: int, seed: int) -> None:
        self.n_records, self.per_step, self.steps, self.seed = n_records, per_step, steps, seed
        self._epoch_cache: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.steps

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) > 2:  # a step spans at most a few epochs
                self._epoch_cache.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch_cache[epoch] = torch.randperm(self.n_records, generator=g).tolist()
        return self._epoch_cache[epoch]

    def __getitem__(self, step: Any) -> Any:
        if isinstance(step, slice):
            return [self[i] for i in range(*step.indices(self.steps))]
        if not -self.steps <= step < self.steps:
            raise IndexError(step)
        position = (step % self.steps) * self.per_step
        out: list[int] = []
        while len(out) < self.per_step:
            epoch, offset = divmod(position, self.n_records)
            take = self._epoch(epoch)[offset : offset + self.per_step - len(out)]
            out += take
            position += len(take)
        return out


def collate(records: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``; the mask is 2 at positions whose token is
    a loss target (from each record's ``loss_from``, see :class:`~adaptkit.training.data.Sample`),
    1 at other real tokens, 0 at padding. Models only see ``mask > 0``."""
    width = max(len(r) for r in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(records), width), dtype=torch.long)
    for i, r in enumerate(records):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
        mask[i, max(1, getattr(r, "loss_from", 1)) : len(r)] = 2
    return ids, mask


def target_tokens(records: list[list[int]]) -> int:
    """How many tokens of ``records`` the loss predicts (positions marked 2 by :func:`collate`)."""
    return sum(len(r) - max(1, getattr(r, "loss_from", 1)) for r in records)


def token_loss_sum(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over target positions (``mask == 2``, see
    :func:`collate`)."""
    logits = model(input_ids=ids, attention_mask=(mask > 0).long()).logits[:, :-1].float()
    targets = ids[:, 1:]
    valid = mask[:, 1:] == 2
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return (losses * valid.reshape(-1)).sum()


def evaluate_loss(
    model: Any,
    records: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    *,
    progress: str | None = None,
) -> float:
    """Mean token loss of ``model`` over ``records`` (no grad).

    Args:
        progress: A label for a progress bar on stderr (none when ``None``).
    """
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc=progress, unit="record", leave=False, dynamic_ncols=True)
    with torch.no_grad(), bar if bar is not None else contextlib.nullcontext():
        for i in range(0, len(records), batch_size):
            chunk = records[i : i + batch_size]
            ids, mask = collate(chunk, pad_id)
            total += float(token_loss_sum(model, ids.to(device), mask.to(device)))
            count += target_tokens(chunk)
            if bar is not None:
                bar.update(len(chunk))
    model.train(was_training)
    return total / max(count, 1)
