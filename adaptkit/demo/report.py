"""The demo's printed table, ``summary.md``, ``results.json`` and charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def accuracy_table(accuracy: dict[str, dict[str, float]]) -> str:
    skills = list(next(iter(accuracy.values())))
    head = f"{'model':<12}" + "".join(f"{s:>10}" for s in skills)
    rows = [head, "-" * len(head)]
    for name, acc in accuracy.items():
        rows.append(f"{name:<12}" + "".join(f"{100 * acc[s]:>9.1f}%" for s in skills))
    return "\n".join(rows)


def update_ratios(adapter: Any, base: Any) -> dict[str, float]:
    """``||ΔW||_F / ||W||_F`` per target (the primer's update-magnitude metric)."""
    modules = dict(base.named_modules())
    return {
        t: p.delta_norm() / float(modules[t].weight.detach().double().norm())
        for t, p in adapter.targets.items()
    }


def write(out: Path, result: Any, adapters: dict[str, Any], base: Any, settings: Any) -> None:
    ratios = {name: update_ratios(adapters[name], base) for name in ("A", "B", result.best)}
    charts = _charts(out, result, ratios)
    parity = result.export.get("parity", [])
    lat = result.export.get("latency") or result.export.get("probe_tokens_per_s", {})
    data = {
        "accuracy": result.accuracy,
        "best": result.best,
        "seconds": result.seconds,
        "tune": result.tune,
        "export": {"parity": parity, "latency": lat},
        "update_ratio": ratios,
        "settings": vars(settings),
    }
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# adaptkit demo",
        "",
        f"Mode: {'quick' if settings.quick else 'full'}; total {result.seconds['total']:.1f} s.",
        "",
        f"Two LoRA adapters (rank {settings.rank}, all linear layers) trained on a tiny byte-level Llama:",
        "skill A `upper` (`hello=` → `HELLO`) and skill B `digits` (`0391=` → `1402`), then combined.",
        (
            "Each adapter also learned to leave the other skill's inputs unchanged (`--replay`)."
            if settings.replay
            else "Each adapter saw only its own skill's data, as published adapters do."
        ),
        "`tuned` is `combine --tune` (one weight per rank-1 component, worst-skill objective).",
        "",
        "## Exact-match accuracy on held-out prompts",
        "",
        "| model | upper | digits |",
        "|---|---|---|",
        *[
            f"| {n} | {100 * a['upper']:.1f}% | {100 * a['digits']:.1f}% |"
            for n, a in result.accuracy.items()
        ],
        "",
        f"Best combination: **{result.best}** (highest worst-skill accuracy).",
        "",
        "## ONNX export of the best combination",
        "",
        *export_lines(result.export),
    ]
    lines += [
        "",
        "## Files",
        "",
        "- `a.yaml`, `b.yaml`, `recipe.yaml` — try `adaptkit combine a.yaml b.yaml -o ab.safetensors`",
        "- `adapters/`, `combined/` — adapters (inspect them with `adaptkit inspect`)",
        "- `onnx/` — the exported model and `export-report.json`",
    ]
    lines += [f"- `{c}`" for c in charts] or ["- charts skipped: `pip install adaptkit[demo]` for matplotlib"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _charts(out: Path, result: Any, ratios: dict[str, dict[str, float]]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    names = list(result.accuracy)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.38
    for i, skill in enumerate(("upper", "digits")):
        ax.bar(
            [x + (i - 0.5) * width for x in range(len(names))],
            [100 * result.accuracy[n][skill] for n in names],
            width,
            label=skill,
        )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Held-out accuracy per model and skill")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    targets = sorted(next(iter(ratios.values())))
    for name, r in ratios.items():
        ax.plot(range(len(targets)), [r.get(t, 0.0) for t in targets], marker="o", label=name)
    ax.set_xticks(
        range(len(targets)),
        [t.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "") for t in targets],
        rotation=70,
        fontsize=7,
    )
    ax.set_ylabel("||ΔW||_F / ||W||_F")
    ax.set_title("Update magnitude per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "update_magnitude.png", dpi=120)
    plt.close(fig)
    return ["accuracy.png", "update_magnitude.png"]


def export_lines(export: dict[str, Any]) -> list[str]:
    """The export's parity (and speed) as Markdown bullets, for either kind of graph."""
    lines = []
    if export.get("graph") == "generation":
        lines.append(
            f"Generation-ready ({export['precision']}, KV cache) for ONNX Runtime GenAI; greedy decoding "
            "compared with PyTorch + the adapter unmerged:"
        )
        for p in export.get("parity", []):
            lines.append(
                f"- prompt of {p['prompt_tokens']} tokens: {p['matching_prefix']}/{p['new_tokens']} new "
                f"tokens identical, top-1 agreement {p['top1_agreement']:.0%}, prefill max |Δlogits| "
                f"{p['prefill_max_abs']:.2e}"
            )
        speed = export.get("probe_tokens_per_s")
        if speed:
            lines.append(
                f"- speed on the probes: ONNX Runtime GenAI {speed['onnx']:.0f} tokens/s, PyTorch unmerged "
                f"{speed['pytorch_unmerged']:.0f} tokens/s"
            )
        return lines
    if export.get("fallback_reason"):
        lines.append(f"Logits-only graph ({export['fallback_reason']}):")
    for p in export.get("parity", []):
        lines.append(f"- parity {p['shape']}: max abs {p['max_abs']:.2e}, max rel {p['max_rel']:.2e}")
    lat = export.get("latency")
    if lat:
        lines.append(
            f"- latency {lat['input_shape']}: ORT merged {lat['ort_merged_s'] * 1e3:.2f} ms, PyTorch "
            f"unmerged {lat['pytorch_unmerged_s'] * 1e3:.2f} ms "
            f"(ORT merged is {lat['pytorch_unmerged_s'] / lat['ort_merged_s']:.1f}x faster)"
        )
    return lines
