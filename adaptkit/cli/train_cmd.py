"""``adaptkit train``: train an adapter with any registered backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from adaptkit.cli.output import echo_json, say
from adaptkit.errors import AdaptkitError

# flag name -> (TrainConfig / LoraSettings field, where)
_LORA_KEYS = ("targets", "exclude", "rank", "alpha", "dropout", "rslora", "dtype", "init")


def _recipe(path: Path, *, output_given: bool) -> dict[str, Any]:
    from adaptkit.io.recipe import resolve_output
    from adaptkit.io.schemas import validate_document
    from adaptkit.io.yamlio import load_yaml_file

    doc = load_yaml_file(path)
    validate_document(doc, "train-recipe", path=path)
    base = path.parent
    for key in ("model", "data", "metrics"):
        if key in doc and (base / doc[key]).exists():
            doc[key] = str(base / doc[key])
    if not output_given:  # -o on the command line replaces the recipe's output unchecked
        doc["output"] = str(resolve_output(doc["output"], path, allow_outside=False))
    return doc


def parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs; values are YAML scalars (``16`` → int, ``true`` → bool).
    The backend's ``options_schema`` checks them (:mod:`adaptkit.training.options`)."""
    from adaptkit.io.yamlio import loads_yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdaptkitError(f"{item!r} is not KEY=VALUE", key="--option")
        parsed = loads_yaml(value, source=f"--option {key.strip()}") if value.strip() else ""
        if isinstance(parsed, (dict, list)):
            raise AdaptkitError(f"expected a single value, got {value!r}", key=f"--option {key.strip()}")
        options[key.strip()] = parsed
    return options


@click.command("train")
@click.argument("recipe", required=False, type=click.Path(path_type=Path))
@click.option("--backend", help="Training backend: lora (16-bit) or qlora (NF4). Default lora.")
@click.option(
    "--model", help="Causal LM: a Hugging Face model directory or Hub id (org/name; safetensors only)."
)
@click.option("--data", help="JSONL (text or input_ids per line) or a plain text file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Adapter file to write.")
@click.option("--targets", help="Comma-separated module names, re:<regex>, or all-linear (default).")
@click.option("--exclude", help="Comma-separated module names never targeted.")
@click.option("--rank", type=int, help="LoRA rank r (default 8).")
@click.option("--alpha", type=float, help="LoRA alpha (default 8).")
@click.option("--dropout", type=float, help="LoRA dropout (default 0).")
@click.option("--rslora", is_flag=True, default=None, help="Scale by alpha/sqrt(r) (rsLoRA).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), help="LoRA parameter dtype.")
@click.option(
    "--base-dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    help="dtype the base loads in (default auto: the checkpoint's own; fp16 trains with loss scaling).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to train (default auto: CUDA when available). Under torchrun: the local rank's GPU.",
)
@click.option(
    "--shard",
    is_flag=True,
    default=None,
    help="Under torchrun: shard the base, LoRA and optimizer state across the processes (FSDP2, "
    "one unit per transformer block) instead of a whole base per process (DDP).",
)
@click.option(
    "--cpu-offload",
    is_flag=True,
    default=None,
    help="With --shard on CUDA: keep the shards in CPU memory, on the GPU only while they compute.",
)
@click.option("--lr", type=float, help="Learning rate (default 3e-4).")
@click.option("--warmup-steps", type=int, help="Linear warm-up steps (default 0).")
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "linear", "cosine"]),
    help="Learning-rate decay after warm-up (default constant).",
)
@click.option("--max-steps", type=int, help="Optimizer steps (default: --epochs over the data).")
@click.option("--epochs", type=int, help="Passes over the data (default 1).")
@click.option("--batch-size", type=int, help="Sequences per micro-batch per process (default 4).")
@click.option("--grad-accum", type=int, help="Micro-batches per optimizer step (default 1).")
@click.option("--seq-len", type=int, help="Longest sequence in tokens (default 512).")
@click.option("--truncate", is_flag=True, default=None, help="Cut over-long records instead of refusing.")
@click.option("--grad-checkpointing", is_flag=True, default=None, help="Trade compute for memory.")
@click.option("--seed", type=int, help="Seed for init, dropout and data order (default 0).")
@click.option("--metrics", type=click.Path(path_type=Path), help="JSONL file: one line per step.")
@click.option(
    "--eval-records",
    type=click.IntRange(min=0),
    help="Records whose loss is measured before and after training (default: sized to the run, "
    "an eighth of the records it trains on, at least 1 and at most 64; 0 skips both).",
)
@click.option("--save-every", type=int, help="Resumable checkpoint every N steps (OUT.checkpoints/).")
@click.option("--resume", type=click.Path(path_type=Path), help="Checkpoint folder to resume from.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Backend option, repeatable.")
@click.option(
    "-f", "--force", is_flag=True, help="Replace an existing output, metrics log or step-N checkpoint."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
def command(recipe: Path | None, force: bool, as_json: bool, **flags: Any) -> None:
    """Train a LoRA adapter on a causal LM.

    Give flags, or a train recipe YAML (schema train-recipe) whose keys the flags override.
    Data: JSONL with {"text": ...} (tokenised with the model's tokenizer) or {"input_ids":
    [...]}, or plain text. Multi-process: run the same command under
    `torchrun --nproc_per_node N -m adaptkit ...` (DDP; add --shard for FSDP2, a base larger
    than one device); only process 0 writes.

    \b
    Examples:
      adaptkit train --model ./tiny-llama --data train.jsonl -o a.safetensors --max-steps 200
      adaptkit train --backend qlora --model ./llama --data d.jsonl -o q.safetensors
      adaptkit train --model Qwen/Qwen2.5-0.5B --base-dtype bf16 --data d.jsonl -o a.safetensors
      adaptkit train recipe.yaml --lr 1e-3
      torchrun --nproc_per_node 2 -m adaptkit train --shard --model ./llama --data d.jsonl -o a.safetensors
    """
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.plugins import get_registry
    from adaptkit.training.loop import run_training
    from adaptkit.training.settings import TrainConfig

    doc: dict[str, Any] = _recipe(recipe, output_given=flags.get("output") is not None) if recipe else {}
    for key, value in flags.items():
        if value is None or key == "options":
            continue
        doc[key] = value
    for key in ("targets", "exclude"):
        if isinstance(doc.get(key), str) and key in flags and flags[key] is not None:
            value = doc[key]
            doc[key] = (
                value
                if (value == "all-linear" or value.startswith("re:"))
                else [v for v in value.split(",") if v]
            )
    doc.setdefault("options", {}).update(parse_options(flags.get("options") or ()))
    for key in ("model", "data", "output"):
        if not doc.get(key):
            raise AdaptkitError(f"missing --{key} (or '{key}' in a train recipe)")
    lora = LoraSettings(**{k: doc.pop(k) for k in list(doc) if k in _LORA_KEYS})
    cfg = TrainConfig(
        lora=lora, force=force, **{k: (str(v) if isinstance(v, Path) else v) for k, v in doc.items()}
    )

    _check_outputs_apart(cfg)
    registry = get_registry()
    registry.get("backend", cfg.backend)
    out = Path(cfg.output)
    main_process = int(os.environ.get("RANK", "0")) == 0
    result = run_training(cfg, registry=registry, progress=not as_json, log=say)
    summary = {
        "output": str(out),
        "backend": cfg.backend,
        "steps": result.steps,
        "eval_loss_before": result.initial_loss,
        "eval_loss_after": result.final_loss,
        "last_step_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.seconds, 2),
        "targets": len(result.adapter.targets),
        "memory": result.memory,
    }
    if not main_process:
        return
    if as_json:
        echo_json(summary)
    else:
        evaluated = (
            f", eval loss {result.initial_loss:.4f} -> {result.final_loss:.4f}"
            if result.final_loss is not None
            else ""
        )
        done = f"{summary['targets']} targets, {result.steps} steps{evaluated} in {summary['seconds']}s"
        click.echo(f"wrote {out}: {done}")


def _check_outputs_apart(cfg: Any) -> None:
    """The adapter, the metrics log and the checkpoint folder are three outputs of one run:
    none may be, hold or lie inside another (``-o X --metrics X --force`` would have the
    adapter replace the log)."""
    from adaptkit.io.output_guard import check_outputs_apart
    from adaptkit.training.loop import checkpoint_dir

    check_outputs_apart(
        {
            "-o": cfg.output,
            "--metrics": cfg.metrics,
            "--save-every": checkpoint_dir(cfg) if cfg.output and cfg.save_every else None,
        }
    )
