"""The demo pipeline behind ``adaptkit demo``.

1. the built-in base (pre-trained once, cached);
2. two LoRA adapters trained with the ``lora`` backend — ``upper`` (skill A) and ``digits``
   (skill B), disjoint inputs — each on its own skill's data only, as published adapters are
   (``replay``: each also learns to leave the other skill's inputs alone);
3. ``a.yaml``, ``b.yaml`` and ``recipe.yaml`` written, and combined with several strategies
   through :func:`adaptkit.combine.job.combine_specs` — exactly ``adaptkit combine a.yaml b.yaml``
   — and once with tuned weights per rank-1 component (``--tune`` on two small evaluation
   sets);
4. exact-match accuracy on held-out prompts of each skill for the base, A, B and every
   combination;
5. the best combination exported with the ``onnx`` exporter: a generation-ready model for
   ONNX Runtime GenAI, its greedy tokens checked against PyTorch with the adapter unmerged;
6. ``summary.md``, ``results.json`` and PNG charts (with matplotlib installed).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES: list[tuple[str, dict[str, Any], int | None]] = [
    ("linear", {}, None),
    ("cat", {}, None),
    ("svd", {}, 4),  # lower rank than the inputs' 8 + 8
    ("ties", {"density": 0.7}, 16),
    ("dare_ties", {"density": 0.7}, 16),
]


@dataclass
class DemoSettings:
    quick: bool = False
    targets: tuple[str, ...] | str = "all-linear"
    rank: int = 8
    alpha: float = 16.0
    lr: float = 1e-2
    steps: int = 300
    eval_prompts: int = 200
    seed: int = 0
    tune_examples: int = 400  # per skill; a quarter is held out
    tune_steps: int = 500
    replay: bool = False

    @classmethod
    def for_mode(cls, quick: bool) -> DemoSettings:
        return cls(quick=True, steps=200, eval_prompts=100, tune_steps=150) if quick else cls(steps=400)


@dataclass
class DemoResult:
    out: Path
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    best: str = ""
    export: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)


def _yaml(path: Path, text: str) -> None:
    path.write_text(text)


def train_config(out: Path, key: str, base: Path, settings: DemoSettings) -> Any:
    """How the demo trains skill ``key`` into its workspace ``out``. ``force``: the workspace was
    checked as a whole by :func:`run_demo`, and a rerun replaces its own adapters."""
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.training.settings import TrainConfig

    return TrainConfig(
        backend="lora",
        model=str(base),
        output=str(out / "adapters" / f"skill_{key}.safetensors"),
        lora=LoraSettings(targets=settings.targets, rank=settings.rank, alpha=settings.alpha),
        lr=settings.lr,
        lr_schedule="cosine",
        warmup_steps=10,
        max_steps=settings.steps,
        batch_size=32,
        seq_len=32,
        seed=settings.seed,
        force=True,
    )


def run_demo(
    out: Path, settings: DemoSettings, log: Any = print, progress: bool = True, *, force: bool = False
) -> DemoResult:
    """Run the demo into the workspace ``out``.

    ``out`` must be new, empty or an earlier demo's workspace (it holds ``results.json``),
    whose files the run replaces; any other existing folder needs ``force``.
    """
    from adaptkit.io.output_guard import OutputKind, check_output

    earlier = (out / "results.json").is_file()
    workspace = OutputKind("demo workspace", folder=True)
    check_output(out, workspace, force=force or earlier, empty_folder_ok=True)

    from adaptkit import nn as lora
    from adaptkit.adapter import WeightedAdapter
    from adaptkit.combine.job import combine_specs
    from adaptkit.demo import base_model, report
    from adaptkit.demo.skills import (
        DIGITS,
        LETTERS,
        exact_match,
        examples,
        identity_examples,
        training_records,
    )
    from adaptkit.exporting import run_export
    from adaptkit.io.native import load_adapter
    from adaptkit.plugins import get_registry
    from adaptkit.training.loop import run_training

    t0 = time.perf_counter()
    result = DemoResult(out=out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters").mkdir(exist_ok=True)
    (out / "combined").mkdir(exist_ok=True)
    registry = get_registry()

    folder = base_model.build(log, progress)
    base, tokenizer = base_model.load(log, progress)
    result.seconds["base"] = time.perf_counter() - t0
    log(f"base model: {folder}")

    skills = {"a": "upper", "b": "digits"}
    held_out = {s: examples(s, settings.eval_prompts, seed=1000) for s in skills.values()}
    for key, skill in skills.items():
        t = time.perf_counter()
        cfg = train_config(out, key, folder, settings)
        pairs = examples(skill, 3000, seed=settings.seed + 1)
        if settings.replay:
            # The *other* skill's inputs with the identity as target: the adapter learns to leave
            # them alone, which is what lets static combinations keep both skills.
            others = [DIGITS] if skill == "upper" else [LETTERS, LETTERS.upper()]
            pairs += identity_examples(others, 1500, seed=settings.seed + 2)
        records = training_records(tokenizer, pairs)
        trained = run_training(
            cfg,
            registry=registry,
            progress=progress,
            log=log,
            model=copy.deepcopy(base),
            tokenizer=tokenizer,
            records=records,
        )
        result.seconds[f"train_{key}"] = time.perf_counter() - t
        log(f"skill {key.upper()} ({skill}): loss {trained.initial_loss:.3f} -> {trained.final_loss:.3f}")
        _yaml(
            out / f"{key}.yaml",
            f"# yaml-language-server: $schema=https://adaptkit.dev/schemas/adapter-spec.schema.json\n"
            f"adapter: adapters/skill_{key}.safetensors\nweight: 1.0\nname: {skill}\n",
        )
    _yaml(
        out / "recipe.yaml",
        "# adaptkit combine recipe.yaml  (flags override these keys)\n"
        "adapters: [a.yaml, b.yaml]\nstrategy: ties\nparams: {density: 0.7}\nrank: 16\nseed: 0\n"
        "output: combined/recipe.safetensors\n",
    )

    t = time.perf_counter()
    candidates: dict[str, Path] = {
        "A": out / "adapters" / "skill_a.safetensors",
        "B": out / "adapters" / "skill_b.safetensors",
    }
    for name, params, rank in STRATEGIES:
        dest = out / "combined" / f"{name}.safetensors"
        combine_specs(
            [str(out / "a.yaml"), str(out / "b.yaml")],
            output=dest,
            strategy=name,
            rank=rank,
            params=params,
            seed=settings.seed,
            force=True,
            progress=False,
            registry=registry,
        )
        candidates[name] = dest
    result.seconds["combine"] = time.perf_counter() - t

    # Tuned: weights per rank-1 component fitted on small evaluation sets of both skills
    # (disjoint from the training data and from the held-out prompts), worst-skill objective —
    # exactly `adaptkit combine a.yaml b.yaml --tune eval_upper.jsonl --tune eval_digits.jsonl
    # --tune-granularity component --tune-objective max ...`. Per layer or per target, two
    # independently trained adapters keep interfering where they share a target.
    t = time.perf_counter()
    tune_sets = []
    for skill in skills.values():
        path = out / f"eval_{skill}.jsonl"
        unseen = {prompt for prompt, _ in held_out[skill]}  # never tune on a test prompt
        rows = [
            r
            for r in examples(skill, settings.tune_examples, seed=settings.seed + 2000)
            if r[0] not in unseen
        ]
        # The tokenizer adds no <s> by itself; the text form keeps records like training's.
        path.write_text("".join(json.dumps({"prompt": "<s>" + p, "completion": a}) + "\n" for p, a in rows))
        tune_sets.append(str(path))
    tuned = combine_specs(
        [str(out / "a.yaml"), str(out / "b.yaml")],
        output=out / "combined" / "tuned.safetensors",
        strategy="cat",
        seed=settings.seed,
        force=True,
        progress=False,
        registry=registry,
        tune={
            "sets": tune_sets,
            "model": str(folder),
            "objective": "max",
            "granularity": "component",
            "steps": settings.tune_steps,
        },
    )
    candidates["tuned"] = out / "combined" / "tuned.safetensors"
    result.tune = tuned["tune"]
    result.seconds["tune"] = time.perf_counter() - t

    t = time.perf_counter()

    def evaluate(model: Any) -> dict[str, float]:
        return {skill: exact_match(model, tokenizer, pairs) for skill, pairs in held_out.items()}

    result.accuracy["base"] = evaluate(base)
    adapters = {}
    for name, path in candidates.items():
        adapters[name] = load_adapter(path)
        model = copy.deepcopy(base)
        lora.load(model, adapters[name])
        result.accuracy[name] = evaluate(model)
    result.seconds["evaluate"] = time.perf_counter() - t
    combos = [*(n for n, _, _ in STRATEGIES), "tuned"]
    result.best = max(
        combos, key=lambda n: (min(result.accuracy[n].values()), sum(result.accuracy[n].values()))
    )
    log(report.accuracy_table(result.accuracy))
    log(f"best combination: {result.best}")

    t = time.perf_counter()
    # Through the export host, as `adaptkit export --onnx` goes: options checked, model resolved,
    # output folder atomic, export-report.json written.
    result.export = run_export(
        "onnx",
        str(folder),
        [WeightedAdapter(adapters[result.best], 1.0, result.best, candidates[result.best])],
        out / "onnx",
        force=True,
        registry=registry,
        log=log,
    )
    result.seconds["export"] = time.perf_counter() - t
    result.seconds["total"] = time.perf_counter() - t0

    report.write(out, result, adapters, base, settings)
    return result
