"""Tuned combination weights: ``adaptkit combine --tune EVAL.jsonl``.

Static strategies give adapter ``i`` one weight ``wᵢ`` everywhere. Tuning learns a weight per
adapter and *group* of targets,

    ΔW_t = Σᵢ αᵢ,g(t) · wᵢ · sᵢ · Bᵢ,t Aᵢ,t,

where ``g(t)`` is one group for all targets (granularity ``adapter``, LoraHub), the target's
layer index (``layer``, the default; LoRA Soups' per-layer CAT weights) or the target itself
(``target``). Granularity ``component`` goes one step finer and weighs every rank-1 component
of every target, ``ΔW_t = Σᵢ Σⱼ αᵢ,t,j · wᵢ · sᵢ · bᵢ,t,j aᵢ,t,jᵀ`` (``j``-th column of ``B``,
row of ``A``): the only granularity that can keep the part of one adapter's update a skill needs
while dropping the part that disturbs another skill at the same target. The base model and
every factor stay frozen (core's :class:`~adaptkit.nn.mixture.LoraMixture` layers, ``α`` their
shared mixing table); only the ``α`` (tens to a few thousand scalars) are fitted, to
minimise the evaluation sets' token loss — their mean, or the worst one (``objective: max``) —
plus ``λ·mean((α − 1)²)``, which keeps ``α`` near the static combination unless the data says
otherwise.

* ``method: gradient`` backpropagates through the LoRA path to ``α`` (Adam, ``steps`` steps,
  one batch of every set per step);
* ``method: search`` is gradient-free, as LoraHub: a (1+1) evolution strategy with the 1/5
  success rule on the objective of a fixed tuning sample (no gradients, only forward passes).
  Written here rather than pulling in an optimisation library for a dozen lines.

Each set is split once, by the seed, into a tuning part and a held-out part; the held-out part
is never seen while tuning, and every reported loss is measured on it. The result folds
``αᵢ,g(t)`` into each input's ``B`` factors, so the chosen strategy combines ordinary adapters
and the output is an ordinary, portable adapter (exact for ``linear``/``cat``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adaptkit import nn as lora
from adaptkit.adapter import Adapter, WeightedAdapter
from adaptkit.errors import AdaptkitError
from adaptkit.lora import LoraPair

GRANULARITIES = ("adapter", "layer", "target", "component")
OBJECTIVES = ("mean", "max")
METHODS = ("gradient", "search")


@dataclass
class TuneSettings:
    """How to tune (``tune:`` in a combine recipe, ``--tune-*`` flags).

    Attributes:
        granularity: ``adapter``, ``layer`` (default), ``target`` or ``component``.
        objective: ``mean`` of the per-set losses, or the worst (``max``).
        method: ``gradient`` (default) or ``search`` (gradient-free).
        steps: Optimiser steps (gradient) or candidate evaluations (search).
        lr: Adam learning rate on ``α`` (gradient).
        batch_size: Records per set per step.
        holdout: Fraction of each set held out for the report (at least one record each).
        regularization: ``λ`` in ``λ·mean((α − 1)²)``.
        seed: Seeds the split, the batches and the search.
    """

    granularity: str = "layer"
    objective: str = "mean"
    method: str = "gradient"
    steps: int = 100
    lr: float = 0.05
    batch_size: int = 16
    holdout: float = 0.25
    regularization: float = 0.01
    seed: int = 0

    def check(self) -> None:
        for key, valid in (("granularity", GRANULARITIES), ("objective", OBJECTIVES), ("method", METHODS)):
            if getattr(self, key) not in valid:
                raise AdaptkitError(
                    f"unknown tune {key} {getattr(self, key)!r}; valid: {', '.join(valid)}", key=f"tune.{key}"
                )
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise AdaptkitError(
                f"tune steps must be a positive integer, got {self.steps!r}", key="tune.steps"
            )
        if not (0 < self.holdout < 1):
            raise AdaptkitError(
                f"tune holdout must be between 0 and 1, got {self.holdout!r}", key="tune.holdout"
            )
        for key in ("lr", "regularization"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise AdaptkitError(
                    f"tune {key} must be a finite number >= 0, got {value!r}", key=f"tune.{key}"
                )


@dataclass
class TuneSet:
    """One evaluation set: its records split into tuning and held-out parts."""

    name: str
    tune: list[list[int]]
    held_out: list[list[int]]
    sha256: str | None = None


@dataclass
class TuneResult:
    """What tuning found: ``weights[group] = [α per adapter]`` and the objective per step."""

    groups: list[str]
    names: list[str]
    weights: dict[str, list[float]]
    seconds: float = 0.0
    trace: list[float] = field(default_factory=list)


def split_set(name: str, records: list[list[int]], holdout: float, seed: int) -> TuneSet:
    """Split ``records`` once, by ``(seed, name)``: ``holdout`` of them (at least one) held out."""
    if len(records) < 2:
        raise AdaptkitError(
            f"evaluation set {name!r} has {len(records)} record(s); tuning needs at least 2 "
            "(one to tune on, one held out)",
            key="--tune",
        )
    g = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)))
    order = torch.randperm(len(records), generator=g).tolist()
    n_out = min(len(records) - 1, max(1, round(holdout * len(records))))
    return TuneSet(
        name=name,
        tune=[records[i] for i in order[n_out:]],
        held_out=[records[i] for i in order[:n_out]],
    )


_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def group_of(target: str, granularity: str, component: int = 0) -> str:
    """``all`` (adapter), the target's first layer index as ``layer N`` (layer, ``other`` when
    it has none), the target itself, or ``TARGET#j`` for its ``j``-th rank-1 component."""
    if granularity == "adapter":
        return "all"
    if granularity == "target":
        return target
    if granularity == "component":
        return f"{target}#{component}"
    m = _LAYER.search(target)
    return f"layer {int(m.group(1))}" if m else "other"


def _set_loss(model: nn.Module, records: list[list[int]], pad_id: int, device: Any) -> torch.Tensor:
    from adaptkit.training import collate, target_tokens, token_loss_sum

    ids, mask = collate(records, pad_id)
    return token_loss_sum(model, ids.to(device), mask.to(device)) / max(target_tokens(records), 1)


def held_out_losses(model: nn.Module, sets: list[TuneSet], pad_id: int, batch_size: int, device: Any) -> dict:
    from adaptkit.training import evaluate_loss

    return {s.name: evaluate_loss(model, s.held_out, pad_id, batch_size, device) for s in sets}


def tune_weights(
    model: nn.Module,
    inputs: Sequence[WeightedAdapter],
    sets: list[TuneSet],
    settings: TuneSettings,
    *,
    pad_id: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Fit ``α`` (see the module docstring) on the tuning parts of ``sets``.

    Args:
        model: The base model (frozen; left without the mixture layers afterwards).
        inputs: The adapters, each with its static weight ``wᵢ`` and name.
        sets: Evaluation sets from :func:`split_set`.
    """
    settings.check()
    if not sets:
        raise AdaptkitError("--tune needs at least one evaluation set")
    started = time.perf_counter()
    device = next(model.parameters()).device
    targets = sorted({t for item in inputs for t in item.adapter.targets})
    groups = _groups(inputs, targets, settings.granularity)
    index = {g: i for i, g in enumerate(groups)}
    first = {t: index[group_of(t, settings.granularity)] for t in targets}
    per_component = settings.granularity == "component"
    # α is the mixture layers' table: input i's weight for group g is α[i, g].
    alpha = torch.ones(len(inputs), len(groups), dtype=torch.float32, device=device)
    lora.attach_mixture(model, inputs, alpha, first, per_component=per_component)  # freezes the rest
    g = torch.Generator().manual_seed(settings.seed)
    trace: list[float] = []
    was_training = model.training
    model.eval()  # no dropout: the objective is a function of α alone

    def objective(batches: list[list[list[int]]]) -> torch.Tensor:
        losses = torch.stack([_set_loss(model, b, pad_id, device) for b in batches])
        loss = losses.max() if settings.objective == "max" else losses.mean()
        return loss + settings.regularization * ((alpha - 1) ** 2).mean()

    def sample(s: TuneSet) -> list[list[int]]:
        if len(s.tune) <= settings.batch_size:
            return s.tune
        idx = torch.randperm(len(s.tune), generator=g)[: settings.batch_size].tolist()
        return [s.tune[i] for i in idx]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=settings.steps, desc=f"tune ({settings.method})", unit="step", leave=False, disable=None
        )
    try:
        if settings.method == "gradient":
            alpha.requires_grad_(True)
            opt = torch.optim.Adam([alpha], lr=settings.lr)
            for _ in range(settings.steps):
                loss = objective([sample(s) for s in sets])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                trace.append(float(loss.detach()))
                if bar is not None:
                    bar.set_postfix(loss=f"{trace[-1]:.4f}")
                    bar.update(1)
            alpha.requires_grad_(False)
        else:
            fixed = [sample(s) for s in sets]
            with torch.no_grad():
                best = float(objective(fixed))
                sigma = 0.3
                for _ in range(settings.steps):
                    keep = alpha.clone()
                    alpha.add_(torch.randn(alpha.shape, generator=g).to(device) * sigma)
                    value = float(objective(fixed))
                    if value < best:
                        best, sigma = value, sigma * 1.5
                    else:
                        alpha.copy_(keep)
                        sigma *= 1.5 ** (-1 / 4)  # the 1/5 success rule
                    trace.append(best)
                    if bar is not None:
                        bar.set_postfix(loss=f"{best:.4f}")
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        lora.detach(model)
        model.train(was_training)
    values = alpha.detach().cpu()
    return TuneResult(
        groups=groups,
        names=[item.name for item in inputs],
        weights={grp: [float(values[i, j]) for i in range(len(inputs))] for j, grp in enumerate(groups)},
        seconds=time.perf_counter() - started,
        trace=trace,
    )


def _groups(inputs: Sequence[WeightedAdapter], targets: list[str], granularity: str) -> list[str]:
    """The group labels, in order; per component, each target's ``#0 … #r-1`` (r: its largest
    rank among the inputs) lie next to each other, as :func:`adaptkit.nn.attach_mixture` expects
    with ``per_component``."""
    if granularity != "component":
        return sorted({group_of(t, granularity) for t in targets}, key=_natural)
    adapters = [item.adapter for item in inputs]
    ranks = {t: max(a.targets[t].rank for a in adapters if t in a.targets) for t in targets}
    return [group_of(t, granularity, j) for t in sorted(targets, key=_natural) for j in range(ranks[t])]


def fold(inputs: Sequence[WeightedAdapter], result: TuneResult, granularity: str) -> list[WeightedAdapter]:
    """Each input with ``αᵢ,g(t)`` folded into its ``B`` factors, target by target (exact):
    the pair's scale times ``α``, or per component ``B``'s ``j``-th column times ``αᵢ,t,j``.
    Weight, name and source stay the input's, so the folded inputs combine as the inputs would."""
    out = []
    for i, item in enumerate(inputs):
        adapter = item.adapter
        targets = {}
        for target, pair in adapter.targets.items():
            if granularity == "component":
                column = [result.weights[group_of(target, granularity, j)][i] for j in range(pair.rank)]
                B = (pair.B.double() * torch.tensor(column, dtype=torch.float64)).to(pair.B.dtype)
                targets[target] = LoraPair.with_scale(pair.A, B, pair.scale)
                continue
            a = result.weights[group_of(target, granularity)][i]
            targets[target] = LoraPair.with_scale(pair.A, pair.B, pair.scale * a)
        folded = Adapter(
            targets=targets,
            base_model=adapter.base_model,
            producer=adapter.producer,
            provenance=adapter.provenance,
            saved=adapter.saved,
            tokens=adapter.tokens,
        )
        out.append(dataclasses.replace(item, adapter=folded))
    return out


def _natural(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def settings_from(block: dict[str, Any], seed: int) -> TuneSettings:
    keys = ("granularity", "objective", "method", "steps", "lr", "batch_size", "holdout", "regularization")
    settings = TuneSettings(seed=seed, **{k: block[k] for k in keys if block.get(k) is not None})
    settings.check()
    return settings


def model_limits(folder: Any) -> tuple[int | None, int | None]:
    """``(vocabulary size, context length)`` of a vetted model folder, without loading it."""
    from adaptkit.io.model_config import config_limits

    return config_limits(folder)


def load_sets(
    paths: list[str], tokenizer: Any, vocab: int, settings: TuneSettings, context: int | None = None
) -> list[TuneSet]:
    """Every evaluation set, split; records longer than ``context`` are refused."""
    from pathlib import Path

    from adaptkit.combine import file_sha256
    from adaptkit.training import load_records

    sets, seen = [], set()
    for raw in paths:
        path = Path(raw)
        name = path.stem if path.stem not in seen else f"{path.stem}#{len(seen)}"
        seen.add(name)
        # The loader is training's: its length limit speaks of train's flags (--seq-len,
        # --truncate). Plain text is cut into context-sized blocks; JSON records are loaded
        # whole and checked here, against the model, in combine's words.
        if _is_jsonl(path):
            records = load_records(str(path), tokenizer, seq_len=1 << 62, vocab_size=vocab, truncate=False)
            if context is not None:
                _refuse_over_context(path, records, context)
        else:
            blocks = context or 1 << 16
            records = load_records(str(path), tokenizer, seq_len=blocks, vocab_size=vocab, truncate=False)
        tune_set = split_set(name, records, settings.holdout, settings.seed)
        tune_set.sha256 = file_sha256(path)
        sets.append(tune_set)
    return sets


def _is_jsonl(path: Any) -> bool:
    """Whether the training loader reads ``path`` as JSON lines (else as plain text)."""
    return path.suffix.lower() in (".jsonl", ".json")


def _refuse_over_context(path: Any, records: list[list[int]], context: int) -> None:
    """Refuse the first record longer than the model's context, by its line number.

    Evaluating it would be silently wrong: positions past the context are ones the model was
    never trained on (or an index error for learned position tables). Truncating would
    change the objective without a word, so combine refuses and names the record instead.
    """
    over = next((i for i, ids in enumerate(records) if len(ids) > context), None)
    if over is None:
        return
    from adaptkit.io.fileio import read_regular_file
    from adaptkit.training import MAX_DATA_BYTES

    # The loader keeps one record per non-blank line, in order (it refuses anything else).
    text = read_regular_file(path, max_bytes=MAX_DATA_BYTES, what="evaluation set").decode("utf-8")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    where = f"line {lines[over]}" if over < len(lines) else f"record {over + 1}"
    raise AdaptkitError(
        f"record has {len(records[over])} tokens, more than the model's context of {context}; "
        "combine --tune evaluates whole records",
        path=path,
        key=where,
        hint="shorten or split the record, or leave it out of the --tune set",
    )


def load_base(model: Any, *, quantize: bool, targets: list[str], registry: Any, log: Any) -> tuple[Any, Any]:
    """The frozen base for tuning: float32, or NF4 through the qlora loader (no full-precision
    copy of a quantized layer, as in training). ``model`` is a directory or Hub id, or a
    ``Path`` :func:`adaptkit.io.models.resolve_model` already returned."""
    from pathlib import Path

    import torch

    from adaptkit.io.models import load_causal_lm, load_tokenizer, resolve_model

    folder = model if isinstance(model, Path) else resolve_model(model)
    if not quantize:
        return load_causal_lm(folder, dtype="fp32")
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.training import TrainConfig

    backend = registry.get("backend", "qlora")
    cfg = TrainConfig(backend="qlora", lora=LoraSettings(targets=targets), options={"quantize": "all-linear"})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = backend.load_model(cfg, folder, torch.bfloat16, device, log)
    if net is None:
        raise AdaptkitError("this base cannot be loaded in 4-bit for tuning; tune without quantize")
    for m in net.modules():  # the same CPU guard the qlora backend sets
        if type(m).__name__ == "Linear4bit":
            m.support_avx512bf16_for_cpu = False
    return net, load_tokenizer(folder)


def evaluate_adapter(
    model: nn.Module, adapter: Adapter, sets: list[TuneSet], pad_id: int
) -> dict[str, float]:
    """Held-out loss of every set with ``adapter`` applied (unbaked) to ``model``: a mixture of
    the one adapter at weight 1, the same layer tuning measures with."""
    device = next(model.parameters()).device
    one = torch.ones(1, 1, device=device)
    lora.attach_mixture(model, [WeightedAdapter(adapter, 1.0)], one, dict.fromkeys(adapter.targets, 0))
    try:
        return held_out_losses(model, sets, pad_id, 16, device)
    finally:
        lora.detach(model)


def heat_map(result: TuneResult, path: Any, *, replace: bool = False) -> None:
    """A PNG of ``α``: adapters × groups (an existing file is replaced only if ``replace``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AdaptkitError("--plot needs matplotlib", hint="pip install 'adaptkit[demo]'") from None
    from adaptkit.io.atomic import atomic_path

    grid = [[result.weights[g][i] for g in result.groups] for i in range(len(result.names))]
    width = min(30, max(5, 0.35 * len(result.groups) + 2))  # per component: hundreds of groups
    fig, ax = plt.subplots(figsize=(width, 1.2 + 0.5 * len(result.names)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(result.names)), result.names)
    if len(result.groups) <= 80:
        ax.set_xticks(range(len(result.groups)), result.groups, rotation=80, fontsize=7)
    else:
        ax.set_xlabel(f"{len(result.groups)} groups, in the order of the weight table")
    ax.set_title("tuned weights α (adapter × group)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path, replace=replace) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
