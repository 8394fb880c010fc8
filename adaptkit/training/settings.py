"""Settings for attaching adapters and for training runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class LoraSettings:
    """How to attach LoRA (used by every backend).

    Attributes:
        targets: Module names (suffix rule, as PEFT), ``"re:<regex>"``, or ``"all-linear"``
            (every ``nn.Linear``/``Conv1D`` except the output head).
        rank: ``r``.
        alpha: LoRA alpha (scale ``alpha/r``; ``alpha/sqrt(r)`` with ``rslora``).
        dropout: Dropout on the LoRA path while training.
        rslora: Use rsLoRA scaling.
        dtype: LoRA parameter dtype: ``fp32``, ``bf16`` or ``fp16``.
        init: ``A`` initialisation, ``kaiming`` (nn.Linear's default) or ``gaussian``
            (std ``1/r``); ``B`` always starts at zero.
        exclude: Module names (suffix rule) never targeted, besides the output head.
    """

    targets: Sequence[str] | str = "all-linear"
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    rslora: bool = False
    dtype: str = "fp32"
    init: str = "kaiming"
    exclude: Sequence[str] = field(default_factory=tuple)


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
            training (0: skip both evaluations).
        force: Replace an existing output, metrics log or ``step-N`` checkpoint (``--force``).
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
    eval_records: int = 64
    force: bool = False
