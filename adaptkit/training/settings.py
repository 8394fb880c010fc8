"""Settings for training runs, and the checks they and the LoRA settings
(:class:`adaptkit.nn.settings.LoraSettings`, imported here for the trainer's users) pass before
any file is read (:func:`check_config`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from adaptkit.errors import AdaptkitError
from adaptkit.nn.settings import LoraSettings

#: An Adam step moves each value by about the learning rate: above 1, a LoRA factor is
#: rewritten every step, which is never a meaningful run (and 1e308 overflows to nan).
MAX_LR = 1.0
#: Upper bounds that keep every derived quantity (the step schedule, seeds, allocations) finite
#: and bounded; far above any real run.
MAX_STEPS = 10**8
MAX_BATCH = 1 << 16
MAX_SEQ_LEN = 1 << 20
MAX_RANK = 1 << 15
MAX_SEED = (1 << 32) - 1


@dataclass
class TrainConfig:
    """One training run (``adaptkit train`` flags or a train recipe YAML).

    Attributes:
        backend: Registered backend name (``lora``, ``qlora``, ...).
        model: Hugging Face model directory or Hub id (causal LM).
        data: JSONL (``text`` or ``input_ids`` per line) or plain text file.
        output: Adapter file to write (native format).
        lora: How to attach LoRA.
        lr: Peak learning rate (reached after ``warmup_steps`` of linear warm-up).
        lr_schedule: After warm-up: ``constant``, ``linear`` or ``cosine`` decay to 0.
        weight_decay: AdamW weight decay.
        max_steps: Optimizer steps (``None``: run ``epochs`` over the data).
        epochs: Passes over the data when ``max_steps`` is not set.
        batch_size: Sequences per micro-batch *per process*.
        grad_accum: Micro-batches per optimizer step.
        seq_len: Longest sequence; longer records are an error unless ``truncate``.
        truncate: Cut records longer than ``seq_len`` instead of refusing them.
        grad_checkpointing: Recompute activations in the backward pass to save memory.
        seed: Seeds initialisation, dropout and data order.
        metrics: JSONL file receiving one line per step.
        save_every: Write a resumable checkpoint every N steps (0: never).
        resume: Checkpoint folder to resume from.
        options: Backend-specific options (e.g. ``qlora``'s ``optimizer``).
        base_dtype: dtype the base is loaded in: ``auto`` (the checkpoint's own), ``bf16``,
            ``fp16`` or ``fp32``. An ``fp16`` base trains with loss scaling.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        eval_records: Records of the fixed sample whose loss is measured before and after
            training (0: skip both evaluations; ``None``: sized to the run, see
            :func:`adaptkit.training.loop.eval_size`).
        force: Replace an existing output, metrics log or ``step-N`` checkpoint (``--force``).
        shard: Under ``torchrun``, shard the base, the LoRA factors and their optimizer state
            across the processes with PyTorch's FSDP2, one unit per transformer block
            (``--shard``; :mod:`adaptkit.training.sharded`). Off: DDP, a whole base per process.
        cpu_offload: With ``shard`` on CUDA, keep the sharded parameters (and the optimizer
            step) in CPU memory, copied to the GPU only while a block computes.
    """

    backend: str = "lora"
    model: str = ""
    data: str = ""
    output: str = ""
    lora: LoraSettings = field(default_factory=LoraSettings)
    lr: float = 3e-4
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 512
    truncate: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    metrics: str | None = None
    save_every: int = 0
    resume: str | None = None
    options: dict = field(default_factory=dict)
    base_dtype: str = "auto"
    device: str = "auto"
    eval_records: int | None = None
    force: bool = False
    shard: bool = False
    cpu_offload: bool = False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any, flag: str, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise AdaptkitError(f"must be an integer from {low} to {high:,}, got {value!r}", key=flag)


def _number(value: Any, flag: str, *, low: float, high: float, low_open: bool = False) -> None:
    ok = _is_real(value) and math.isfinite(value) and (value > low if low_open else value >= low)
    if not ok or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise AdaptkitError(f"must be a finite number {bound} and <= {high:g}, got {value!r}", key=flag)


def _choice(value: Any, flag: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise AdaptkitError(f"unknown value {value!r}; valid: {', '.join(valid)}", key=flag)


def check_lora_settings(s: LoraSettings) -> None:
    """Refuse LoRA settings no run could use (ranks, scales, dtypes), naming the flag."""
    _integer(s.rank, "--rank", 1, MAX_RANK)
    # alpha scales the update: 0 trains nothing, a non-finite one turns every output into nan.
    _number(s.alpha, "--alpha", low=0.0, high=1e6, low_open=True)
    if not _is_real(s.dropout) or not 0.0 <= s.dropout < 1.0:
        raise AdaptkitError(f"must be a number in [0, 1), got {s.dropout!r}", key="--dropout")
    if not isinstance(s.rslora, bool):
        raise AdaptkitError(f"must be true or false, got {s.rslora!r}", key="--rslora")
    _choice(s.dtype, "--dtype", ("fp32", "bf16", "fp16"))
    _choice(s.init, "--init", ("kaiming", "gaussian"))
    targets = s.targets
    if not isinstance(targets, str) and (not targets or not all(isinstance(t, str) and t for t in targets)):
        raise AdaptkitError(f"must be module names, got {targets!r}", key="--targets")
    if isinstance(s.exclude, str) or not all(isinstance(t, str) and t for t in s.exclude):
        raise AdaptkitError(f"must be a list of module names, got {s.exclude!r}", key="--exclude")


def check_config(cfg: TrainConfig) -> None:
    """Refuse every setting of ``cfg`` that is out of range, before anything is read or loaded.

    The CLI's flags, a train recipe and Python callers all reach the trainer through here, so a
    value such as ``lr=nan`` or ``batch_size=0`` is one error naming the flag, never a
    traceback minutes later.

    Raises:
        AdaptkitError: naming the flag (``--lr``) and the value.
    """
    check_lora_settings(cfg.lora)
    _number(cfg.lr, "--lr", low=0.0, high=MAX_LR, low_open=True)
    _number(cfg.weight_decay, "weight_decay", low=0.0, high=1e6)
    if cfg.lr * cfg.weight_decay >= 1.0:
        # AdamW multiplies every factor by (1 - lr * weight_decay) each step.
        raise AdaptkitError(
            f"lr x weight_decay is {cfg.lr * cfg.weight_decay:g}: every step would zero or flip the "
            "factors (it must stay below 1)",
            key="weight_decay",
        )
    _choice(cfg.lr_schedule, "--lr-schedule", ("constant", "linear", "cosine"))
    _integer(cfg.warmup_steps, "--warmup-steps", 0, MAX_STEPS)
    if cfg.max_steps is not None:
        _integer(cfg.max_steps, "--max-steps", 1, MAX_STEPS)
    _integer(cfg.epochs, "--epochs", 1, MAX_STEPS)
    _integer(cfg.batch_size, "--batch-size", 1, MAX_BATCH)
    _integer(cfg.grad_accum, "--grad-accum", 1, MAX_BATCH)
    _integer(cfg.seq_len, "--seq-len", 2, MAX_SEQ_LEN)
    _integer(cfg.seed, "--seed", 0, MAX_SEED)
    _integer(cfg.save_every, "--save-every", 0, MAX_STEPS)
    if cfg.eval_records is not None:
        _integer(cfg.eval_records, "--eval-records", 0, MAX_STEPS)
    flags = (
        ("--truncate", cfg.truncate),
        ("--grad-checkpointing", cfg.grad_checkpointing),
        ("--shard", cfg.shard),
        ("--cpu-offload", cfg.cpu_offload),
    )
    for flag, value in flags:
        if not isinstance(value, bool):
            raise AdaptkitError(f"must be true or false, got {value!r}", key=flag)
    _choice(cfg.base_dtype, "--base-dtype", ("auto", "bf16", "fp16", "fp32"))
    _choice(cfg.device, "--device", ("auto", "cpu", "cuda"))
    if cfg.cpu_offload and not cfg.shard:
        raise AdaptkitError(
            "--cpu-offload keeps sharded parameters in CPU memory: it needs --shard", key="--cpu-offload"
        )
    if not isinstance(cfg.options, dict):
        raise AdaptkitError(f"backend options must be a mapping, got {cfg.options!r}", key="--option")
