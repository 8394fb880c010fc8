"""The training loop shared by every backend (batches and their loss:
:mod:`adaptkit.training.batches`).

Loss: causal-LM cross-entropy summed over non-padding target tokens and divided by the
number of target tokens in the whole optimizer step (all micro-batches, all processes). So a
step's gradient is the same whatever the split into micro-batches and processes: a 2-process
``torchrun`` run equals a 1-process run with the same global batch.

Data order is a pure function of ``(seed, step)``, which, with the optimizer state, the LoRA
factors and the RNG state in each checkpoint, makes resumed runs continue exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import AdaptkitError, OutputError
from adaptkit.training.batches import collate, evaluate_loss, step_indices, target_tokens, token_loss_sum
from adaptkit.training.memory import dominant_dtype, memory_account, optimizer_state_bytes, peak_memory
from adaptkit.training.settings import TrainConfig

#: Most records the before/after evaluation uses by default (see :func:`eval_size`).
EVAL_RECORDS = 64


@dataclass
class TrainResult:
    adapter: Any
    steps: int
    losses: list[float] = field(default_factory=list)
    initial_loss: float | None = None
    final_loss: float | None = None
    seconds: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)


def learning_rate(cfg: TrainConfig, step: int, steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then ``lr_schedule`` (constant/linear/cosine)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, steps - cfg.warmup_steps)
    progress = (step - cfg.warmup_steps) / span
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - progress)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.lr_schedule != "constant":
        raise AdaptkitError(f"unknown lr_schedule {cfg.lr_schedule!r}; valid: constant, linear, cosine")
    return cfg.lr


def eval_size(requested: int | None, n_records: int, trained_records: int) -> int:
    """Records evaluated before and after training.

    ``requested`` (``--eval-records``) when given. Otherwise sized to the run: an eighth of the
    records this run trains on (steps x batch size x grad accumulation x processes), at least 1
    and at most :data:`EVAL_RECORDS` and the data. Evaluation is forward-only and training
    costs about three forwards per record, so the two passes together cost at most about a
    twelfth of the training (a 2-step run is not held up by 128 evaluated records).
    """
    if requested is not None:
        return requested
    return max(1, min(EVAL_RECORDS, n_records, math.ceil(trained_records / 8)))


@dataclass
class RunPlan:
    """Everything a run needs that is known before its model loads.

    Attributes:
        records: The tokenised training sequences.
        tokenizer: The model's tokenizer, or ``None``.
        folder: The resolved model folder (``None`` when the model was given directly).
        vocab_checked: The vocabulary size the records were checked against (``None``: not yet).
        steps: Optimizer steps of the whole run.
        start: The step this run starts at (a resumed checkpoint's).
        eval_records: Records evaluated before and after training.
        checkpoint: ``(adapter, tensors, state)`` of the resumed checkpoint, checked.
    """

    records: list[list[int]]
    tokenizer: Any
    folder: Path | None
    vocab_checked: int | None
    steps: int
    start: int
    eval_records: int
    checkpoint: tuple[Any, dict[str, Any], dict[str, Any]] | None = None


def plan_run(
    cfg: TrainConfig,
    backend: Any,
    dist: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    records: list[list[int]] | None = None,
) -> RunPlan:
    """Check every input that can be checked without the model, cheapest first, and work out
    the run: the data file (read, parsed and tokenised), the outputs, the resume checkpoint
    and its settings, the step count and the evaluation size. A 7B base is loaded only once
    all of these passed.

    Raises:
        AdaptkitError: naming the file, flag or setting.
    """
    from adaptkit.training.data import read_data, tokenize_records

    data = read_data(cfg.data) if records is None else None
    if dist.main:
        check_train_outputs(cfg)
    checkpoint = _read_checkpoint(cfg, backend) if cfg.resume else None
    folder, vocab, context = None, None, None
    if model is None:
        from adaptkit.io.model_config import config_limits
        from adaptkit.io.models import load_tokenizer, resolve_model

        folder = resolve_model(cfg.model)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(folder)
        vocab, context = config_limits(folder)
    else:
        vocab = model_vocab_size(model)
        context = getattr(model.config, "max_position_embeddings", None)
    if data is not None:
        records = tokenize_records(
            data, tokenizer, seq_len=cfg.seq_len, vocab_size=vocab, truncate=cfg.truncate
        )
    assert records is not None
    if not records:
        raise AdaptkitError("no training records", key="records")
    _refuse_over_context(records, context, cfg)
    per_step = cfg.batch_size * dist.world * cfg.grad_accum
    steps = cfg.max_steps or cfg.epochs * max(1, math.ceil(len(records) / per_step))
    start = checkpoint[2]["step"] if checkpoint else 0
    if start >= steps:
        raise AdaptkitError(
            f"the checkpoint is at step {start}, but this run has {steps} steps: nothing to train",
            path=cfg.resume,
            key="step",
            hint="raise --max-steps, or resume from an earlier checkpoint",
        )
    if cfg.eval_records is not None and cfg.eval_records > len(records):
        raise AdaptkitError(
            f"{cfg.eval_records} records to evaluate, but the data has {len(records)}",
            path=cfg.data or None,
            key="--eval-records",
            hint=f"give at most {len(records)}, or leave it out to size the evaluation to the run",
        )
    evaluated = eval_size(cfg.eval_records, len(records), (steps - start) * per_step)
    return RunPlan(records, tokenizer, folder, vocab, steps, start, evaluated, checkpoint)


def _refuse_over_context(records: list[Any], context: int | None, cfg: TrainConfig) -> None:
    """A record longer than the model's context would train on positions the model was never
    built for (or fail inside attention): refused before the model loads, with the fix."""
    longest = max((len(r) for r in records), default=0)
    if isinstance(context, int) and context > 0 and longest > context:
        raise AdaptkitError(
            f"a training record has {longest} tokens, more than the model's context of {context} "
            "(config.json)",
            path=cfg.data,
            hint=f"pass --seq-len {context} --truncate, or shorten the records",
        )


def model_vocab_size(model: Any) -> int:
    return int(getattr(model.config, "vocab_size", 0) or model.get_input_embeddings().num_embeddings)


def _read_checkpoint(cfg: TrainConfig, backend: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The resume checkpoint, read and checked against ``cfg`` (no model needed)."""
    from adaptkit.training.checkpoint import load_checkpoint
    from adaptkit.training.options import backend_options
    from adaptkit.training.resume import check_checkpoint

    folder = Path(cfg.resume)
    adapter, tensors, state = load_checkpoint(folder)
    check_checkpoint(folder, adapter, tensors, state, cfg, lambda options: backend_options(backend, options))
    return adapter, tensors, state


def run_training(
    cfg: TrainConfig,
    *,
    registry: Any = None,
    progress: bool = True,
    log: Any = None,
    model: Any = None,
    tokenizer: Any = None,
    records: list[list[int]] | None = None,
    backend: Any = None,
) -> TrainResult:
    """Train an adapter as ``cfg`` says and write it to ``cfg.output`` (process 0 only).

    ``model``/``tokenizer``/``records`` may be given directly (Python API, demo); otherwise
    they are loaded from ``cfg.model`` and ``cfg.data``. ``backend`` may be a backend object
    (an unregistered one, in a backend's own tests); otherwise ``cfg.backend`` is looked up.

    Every setting and input that needs no model (:func:`plan_run`) is checked before the model
    loads. ``cfg.options`` reaches the backend checked against its ``options_schema``, with
    defaults filled (:mod:`adaptkit.training.options`).

    The learning-rate schedule sets every optimizer param group's ``lr`` to
    ``schedule(step) · group.get("lr_scale", 1.0)``, so a backend can give groups their own
    ratio to the peak rate (LoRA+ trains ``B`` faster than ``A`` this way).
    """
    from adaptkit.plugins import get_registry
    from adaptkit.training import sharded
    from adaptkit.training.checkpoint import restore_optimizer, save_checkpoint
    from adaptkit.training.distributed import join, launch, shutdown
    from adaptkit.training.options import backend_options
    from adaptkit.training.settings import check_config

    if backend is None:
        registry = registry or get_registry()
        backend = registry.get("backend", cfg.backend)
    check_config(cfg)
    cfg = replace(cfg, options=backend_options(backend, cfg.options))
    dist = launch(cfg.device)
    say = log or (lambda msg: print(msg, flush=True))

    def note(msg: str) -> None:
        if dist.main:
            say(msg)

    if cfg.shard:
        sharded.check_request(cfg, backend, dist, model_given=model is not None)
    torch.manual_seed(cfg.seed)
    plan = plan_run(cfg, backend, dist, model=model, tokenizer=tokenizer, records=records)
    records, tokenizer, steps, start = plan.records, plan.tokenizer, plan.steps, plan.start
    # Every refusal above and in plan_shards (the skeleton, the backend, the targets) is made by
    # every process alike before any of them waits on a peer.
    shards = sharded.plan_shards(cfg, backend, plan.folder, dist.device, note) if cfg.shard else None
    join(dist)
    if shards is not None:
        model, params = sharded.materialize(shards, cfg, dist, note)
        base_dtype = shards.dtype
    else:
        model, params, base_dtype = _load_and_prepare(cfg, backend, dist, note, plan, model)
    if plan.folder is not None:
        vocab = model_vocab_size(model)
        if plan.vocab_checked != vocab:
            from adaptkit.training.data import check_token_ids

            check_token_ids(records, vocab, path=cfg.data)
    pad_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad_id = 0 if pad_id is None else int(pad_id)
    scaler = None
    masters: list[tuple[Any, torch.dtype]] = []
    if base_dtype == torch.float16:
        # fp16 activations underflow in the backward pass: scale the loss up, unscale the
        # gradients before the step, skip steps that overflow (torch.amp.GradScaler).
        scaler = torch.amp.GradScaler(dist.device.type)
        note("fp16 base: loss scaling with torch.amp.GradScaler (bf16 and fp32 bases need none)")
        masters = fp32_master_weights(params)
        if masters:
            note(
                "fp16 base: fp16 LoRA factors train as float32 master weights (loss scaling cannot "
                "unscale fp16 gradients, and small updates would round away) and are written in fp16"
            )
    if cfg.grad_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works with a
        # frozen (also 4-bit) base; the reentrant kind silently drops the LoRA gradients there.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "config"):
            model.config.use_cache = False
        note("gradient checkpointing: on (non-reentrant, works with a frozen or 4-bit base)")
    optimizer = backend.optimizer(params, cfg, note)
    check_param_groups(optimizer, backend)
    memory = memory_account(model, params, dist.device, shards=dist.world if cfg.shard else 1)
    note(
        f"memory: base {memory['base_dtype']} {memory['base_bytes'] / 2**20:,.1f} MiB"
        + (f" ({memory['quantized_layers']} layers 4-bit)" if memory["quantized_layers"] else "")
        + f", LoRA {memory['lora_bytes'] / 2**20:,.2f} MiB on {dist.device}"
        + (f" (each process's share of {dist.world})" if cfg.shard else "")
    )

    per_rank, world = cfg.batch_size, dist.world
    per_step = per_rank * world * cfg.grad_accum
    schedule = step_indices(len(records), per_step, steps, cfg.seed)

    if plan.checkpoint is not None:
        adapter, tensors, state = plan.checkpoint
        folder = Path(cfg.resume)
        _copy_factors(model, adapter, folder)
        restore_optimizer(optimizer, tensors, state, folder=folder)
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        note(f"resumed from {cfg.resume} at step {start}")

    train_model: Any = model
    if world > 1 and not cfg.shard:
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    # Before/after loss on the same fixed sample, so the two are comparable. A sharded model
    # computes only with every process taking part: each evaluates the whole sample.
    probe = records[: plan.eval_records]
    show = progress and dist.main
    evaluates = bool(probe) and (dist.main or cfg.shard)
    initial = (
        evaluate_loss(model, probe, pad_id, per_rank, dist.device, progress="eval before" if show else None)
        if evaluates
        else None
    )

    stack = contextlib.ExitStack()
    metrics_fh = None
    if cfg.metrics and dist.main:
        # Appending on resume continues the log; otherwise "x" keeps creation exclusive.
        mode = "a" if cfg.resume else ("w" if cfg.force else "x")
        try:
            metrics_fh = stack.enter_context(open(cfg.metrics, mode))  # noqa: SIM115
        except FileExistsError:
            hint = "pass --force to replace it"
            raise OutputError("metrics log exists", path=cfg.metrics, hint=hint) from None
        report = backend.memory_report(model) if hasattr(backend, "memory_report") else {}
        if not cfg.resume:
            metrics_fh.write(json.dumps({"memory_report": report, "memory": memory}) + "\n")
    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm

        bar = stack.enter_context(
            tqdm(
                total=steps,
                initial=start,
                desc=f"train ({cfg.backend})",
                unit="step",
                dynamic_ncols=True,
            )
        )
    losses: list[float] = []
    began = time.perf_counter()
    with stack:
        for step in range(start, steps):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * float(group.get("lr_scale", 1.0))
            indices = schedule[step]
            step_records = [records[i] for i in indices]
            total_targets = target_tokens(step_records)
            loss_sum = 0.0
            micro = [
                step_records[(a * world + dist.rank) * per_rank : (a * world + dist.rank + 1) * per_rank]
                for a in range(cfg.grad_accum)
            ]
            for a, chunk in enumerate(micro):
                ids, mask = collate(chunk, pad_id)
                ids, mask = ids.to(dist.device), mask.to(dist.device)
                sync = world == 1 or a == cfg.grad_accum - 1
                ctx = contextlib.nullcontext()
                if cfg.shard:  # FSDP2 accumulates unsharded gradients until the last micro-batch
                    model.set_requires_gradient_sync(sync)
                elif not sync:
                    ctx = train_model.no_sync()
                with ctx:
                    part = token_loss_sum(train_model, ids, mask)
                    # DDP and FSDP average gradients over processes; multiply by world to get the sum.
                    scaled = part * (world / total_targets)
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += float(part.detach())
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = dist.all_sum(loss_sum) / total_targets
            losses.append(loss)
            dt = time.perf_counter() - t0
            tokens = sum(len(r) for r in step_records)
            if step == start:
                memory["optimizer_state_bytes"] = optimizer_state_bytes(optimizer)
                note(f"memory: optimizer state {memory['optimizer_state_bytes'] / 2**20:,.2f} MiB")
            peaks = dist.all_gather_int(peak_memory(dist.device))
            record = {
                "step": step + 1,
                "loss": loss,
                "lr": lr,
                "tokens_per_s": tokens / dt,
                "peak_memory_bytes": peaks[0],
                **({"peak_memory_bytes_per_rank": peaks} if world > 1 else {}),
            }
            if metrics_fh:
                metrics_fh.write(json.dumps(record) + "\n")
                metrics_fh.flush()
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / dt:,.0f}")
                bar.update(1)
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                # Sharded factors and optimizer state are gathered whole by every process together.
                snapshot = None
                if dist.main or cfg.shard:
                    snapshot = backend.extract(model, base_name=None, provenance={})
                gathered = sharded.whole_optimizer_state(optimizer) if cfg.shard else None
                if dist.main:
                    folder = checkpoint_dir(cfg) / f"step-{step + 1}"
                    save_checkpoint(
                        folder,
                        adapter=snapshot,
                        optimizer=optimizer,
                        state=gathered,
                        step=step + 1,
                        overwrite=cfg.force,
                        extra={
                            "config": _jsonable(cfg),
                            **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
                        },
                    )
                    note(f"checkpoint {folder}")
                dist.barrier()

    model.eval()
    for param, dtype in masters:  # the adapter is written, and evaluated, in the dtype asked for
        param.data = param.data.to(dtype)
    final = (
        evaluate_loss(model, probe, pad_id, per_rank, dist.device, progress="eval after" if show else None)
        if evaluates
        else None
    )
    peaks = dist.all_gather_int(peak_memory(dist.device))
    memory["peak_bytes"] = peaks[0]
    if world > 1:
        memory["peak_bytes_per_rank"] = peaks
    memory["peak_measured"] = (
        "CUDA max allocated" if dist.device.type == "cuda" else "peak RSS of the process"
    )
    if cfg.metrics and dist.main:
        with open(cfg.metrics, "a") as fh:
            fh.write(json.dumps({"peak_memory": memory}) + "\n")
    provenance = {"train": _jsonable(cfg), "eval_loss_before": initial, "eval_loss_after": final}
    adapter = backend.extract(
        model,
        base_name=getattr(getattr(model, "config", None), "_name_or_path", None) or cfg.model or None,
        provenance=provenance,
    )
    if dist.main and cfg.output:
        from adaptkit.io.native import save_adapter

        save_adapter(adapter, cfg.output, overwrite=cfg.force)
    dist.barrier()
    shutdown(dist)
    if hasattr(backend, "memory_report"):
        memory = {**backend.memory_report(model), **memory}
    return TrainResult(
        adapter=adapter,
        steps=steps,
        losses=losses,
        initial_loss=initial,
        final_loss=final,
        seconds=time.perf_counter() - began,
        memory=memory,
    )


def _load_and_prepare(
    cfg: TrainConfig, backend: Any, dist: Any, note: Any, plan: RunPlan, model: Any
) -> tuple[Any, list[Any], torch.dtype]:
    """The unsharded path: the base loaded whole on this process's device (or ``model`` as
    given, moved there), then ``backend.prepare``; returns ``(model, params, base dtype)``."""
    if model is None:
        model, _ = _load_base(cfg, backend, dist.device, note, folder=plan.folder)
    elif not any(type(p).__name__ == "Params4bit" for p in model.parameters()):
        # A model given directly moves before the backend attaches anything: bitsandbytes' 4-bit
        # weights are quantized when moved, and moving them again corrupts them (bitsandbytes
        # #2078). A model loaded here is already where it belongs.
        model.to(dist.device)
    base_dtype = dominant_dtype(model)
    torch.manual_seed(cfg.seed)
    params = backend.prepare(model, cfg.lora, cfg, note)
    if not params:
        raise AdaptkitError(f"backend {cfg.backend!r} left nothing to train")
    return model, params, base_dtype


def _load_base(
    cfg: TrainConfig, backend: Any, device: torch.device, note: Any, *, folder: Path | None = None
) -> tuple[Any, Any]:
    """Load ``cfg.model`` (or the already resolved ``folder``) in ``cfg.base_dtype`` straight
    onto ``device``, letting the backend add ``from_pretrained`` arguments (``qlora``: quantize
    while loading)."""
    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model, torch_dtype

    folder = folder if folder is not None else resolve_model(cfg.model)
    dtype = torch_dtype(cfg.base_dtype, folder)
    name = str(dtype).removeprefix("torch.")
    where_from = " (the checkpoint's dtype)" if cfg.base_dtype == "auto" else ""
    if hasattr(backend, "load_model"):
        model = backend.load_model(cfg, folder, dtype, device, note)
        if model is not None:
            note(f"base: {name}{where_from}, on {device}")
            return model, load_tokenizer(folder)
    extra = backend.loading(cfg, folder, note) if hasattr(backend, "loading") else {}
    # device_map places each shard's tensors as they load; a plain CPU load needs none.
    where = device if (extra or device.type != "cpu") else None
    model, tokenizer = load_causal_lm(folder, dtype=dtype, device=where, load_kwargs=extra)
    name = str(dtype).removeprefix("torch.")
    note(
        f"base: {name}" + (" (the checkpoint's dtype)" if cfg.base_dtype == "auto" else "") + f", on {device}"
    )
    return model, tokenizer


def check_train_outputs(cfg: TrainConfig) -> None:
    """Apply :func:`adaptkit.io.output_guard.check_output` to all a run writes, before loading.

    Inputs are the data, the model folder (when local) and the resumed checkpoint. The
    metrics log may exist when resuming (it is appended to); the ``step-N`` checkpoints this
    run would write must not exist without ``force``.
    """
    from adaptkit.io.output_guard import ADAPTER_FILE, CHECKPOINT_FOLDER, METRICS, check_output

    inputs = [cfg.data, cfg.model if cfg.model and Path(cfg.model).exists() else None, cfg.resume]
    if cfg.output:
        check_output(cfg.output, ADAPTER_FILE, inputs=inputs, force=cfg.force)
    if cfg.metrics:
        metrics_inputs = [*inputs, cfg.output]
        check_output(
            cfg.metrics, METRICS, inputs=metrics_inputs, force=cfg.force or bool(cfg.resume), flag="--metrics"
        )
    if cfg.output and cfg.save_every:
        folder = checkpoint_dir(cfg)
        start = _resume_step(cfg)
        later = sorted(
            p.name
            for p in (folder.iterdir() if folder.is_dir() else ())
            if p.name.startswith("step-") and p.name[5:].isdigit() and int(p.name[5:]) > start
        )
        for name in later:
            check_output(
                folder / name, CHECKPOINT_FOLDER, inputs=inputs, force=cfg.force, flag="--save-every"
            )


def _resume_step(cfg: TrainConfig) -> int:
    """The step a resumed run starts at, from its folder name (``step-N``); 0 otherwise."""
    if not cfg.resume:
        return 0
    name = Path(cfg.resume).name
    return int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else 0


def checkpoint_dir(cfg: TrainConfig) -> Path:
    out = Path(cfg.output)
    return out.with_name(out.name + ".checkpoints")


def _copy_factors(model: Any, adapter: Any, folder: Path) -> None:
    """Load a checkpoint's factors into the attached layers: the same targets, and per target
    the same shapes and dtypes (a cast would silently change what is resumed)."""
    from adaptkit.errors import InvalidAdapterError

    path = folder / "adapter.safetensors"
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "lora_B")}
    missing = sorted(set(adapter.targets) ^ set(layers))
    if missing:
        raise InvalidAdapterError(
            f"checkpoint targets differ from this run's: {missing[:3]}",
            path=path,
            hint="resume with the same --targets",
        )
    for name, pair in adapter.targets.items():
        for label, saved, live in (("A", pair.A, layers[name].lora_A), ("B", pair.B, layers[name].lora_B)):
            if saved.shape != live.shape or saved.dtype != live.dtype:
                raise InvalidAdapterError(
                    f"factor {label} is {_describe(saved)}, this run trains {_describe(live)}",
                    path=path,
                    key=name,
                    hint="resume with the same --rank, --dtype and --base-dtype",
                )
    from adaptkit.training.sharded import copy_whole

    for name, pair in adapter.targets.items():
        copy_whole(layers[name].lora_A, pair.A)
        copy_whole(layers[name].lora_B, pair.B)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


#: A backend's param group may train faster than ``--lr`` (LoRA+'s ``B``), but not by more.
MAX_LR_SCALE = 1024.0


def check_param_groups(optimizer: Any, backend: Any) -> None:
    """Every param group's ``lr_scale`` is a finite ratio in (0, :data:`MAX_LR_SCALE`]: the
    schedule multiplies it into the learning rate each step, so a backend that computed it
    from a hostile option (``ratio=1e308``) would otherwise train on overflow."""
    for n, group in enumerate(optimizer.param_groups):
        scale = group.get("lr_scale", 1.0)
        finite = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
        if not finite or not 0 < scale <= MAX_LR_SCALE:
            raise AdaptkitError(
                f"backend {getattr(backend, 'name', '?')!r} gives param group {n} an lr_scale of {scale!r}; "
                f"it must be in (0, {MAX_LR_SCALE:g}]",
                key="--option",
                hint="check the backend options",
            )


def fp32_master_weights(params: list[Any]) -> list[tuple[Any, torch.dtype]]:
    """Train fp16 ``params`` in float32, in place; returns ``(param, fp16)`` to cast back.

    Loss scaling (``GradScaler``) refuses to unscale fp16 gradients, and rightly: an fp16 factor
    loses updates smaller than its rounding step. As PEFT keeps adapter weights in float32 under
    autocast, the factors train in float32 (LoRA layers compute in their factors' dtype and
    cast back to the activations'); the trainer casts them to fp16 before evaluating and
    writing. The parameter objects stay the same, so an optimizer built later sees them."""
    upcast = []
    for p in params:
        if p.dtype == torch.float16:
            p.data = p.data.to(torch.float32)
            upcast.append((p, torch.float16))
    return upcast


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["lora"]["targets"] = (
        list(d["lora"]["targets"]) if not isinstance(d["lora"]["targets"], str) else d["lora"]["targets"]
    )
    d["lora"]["exclude"] = list(d["lora"]["exclude"])
    return d
