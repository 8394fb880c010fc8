"""Quality of quantized exports on a trained model: top-1 agreement and perplexity against fp32.

The fixture is :mod:`benchmarks.quality_model`: a ~22M-parameter Llama trained from scratch
on the Python standard library's code, a LoRA adapter trained with ``adaptkit train`` on its
documentation, and fixed held-out windows (half code, half docs). The reference is PyTorch in
float32 with the adapter attached *unmerged* — what every export's parity check compares with.
Each variant returns its logits for the same windows; against the reference, over every
position of every window:

- **top-1 agreement**: how often the variant's argmax is the reference's;
- **perplexity** of the held-out text, and its change from the reference's;
- **KL**: mean KL(reference ‖ variant) per position, in nats;
- **probe agreement**: what ``adaptkit export --onnx`` itself gates on (``--min-agreement``):
  teacher-forced top-1 agreement on the exporter's 3 random-token probe prompts × 12 greedy
  tokens of the reference (:func:`adaptkit_onnx.parity.verify_generation`), computed here the
  same way for every variant (for the ``adaptkit export`` rows the export's own report is
  kept too, as ``exporter_parity``);
- the size of the weights on disk, and the seconds to score all windows (after a warm-up).

Variants (:data:`VARIANTS`, name → ``variant(fixture, scratch) -> Scorer``):

- ``pytorch_fp32_no_adapter``: the base alone — how many argmaxes the adapter itself moves;
- ``onnx_fp32``, ``onnx_fp16``, ``onnx_int4_b32_acc4``: ``adaptkit export --onnx --precision
  P`` (``--min-agreement 0``: measured here, not gated). The int4 export's defaults are ONNX
  Runtime GenAI's builder's for the CPU provider: block size 32, ``accuracy_level`` 4 (int8
  activations in ``MatMulNBits``);
- ``onnx_int4_b{32,64,128}_acc{0,4}``: the other block sizes and accuracy levels, which
  ``adaptkit export`` does not expose: the builder child the exporter runs
  (``adaptkit_onnx.generation.builder_worker``) with ``block_size``/``accuracy_level`` added to
  its options, on the ``adaptkit export --merged`` checkpoint an int4 export hands it, then
  the exporter's own ``finish_config``. Accuracy level 0 (unset: activations stay float32,
  no int8 step) is the builder's default for ``--device cuda``. Each graph's ``MatMulNBits``
  attributes are read back and reported.

More runtimes slot in as one more entry of :data:`VARIANTS` (the GGUF rows go here): a
function that builds its artifact under ``scratch`` and returns a :class:`Scorer` whose
``logits(window)`` gives ``[len(window), vocab]`` float32 logits for a list of token ids.

    python -m benchmarks --only quality              # full (+ the fixture's training, once)
    python -m benchmarks.bench_quality --quick       # the tiny fixture, a few minutes
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_realsize import cache_dir
from benchmarks.common import emit, parser, run_info
from benchmarks.quality_model import Fixture, adapted, fixture

WEIGHT_FILES = ("model.onnx", "model.onnx.data", "model.safetensors")


@dataclass
class Scorer:
    """One variant, built: what :func:`score` needs from it.

    Attributes:
        logits: One window (token ids) → ``[len(window), vocab]`` float32 logits.
        artifact: The file or folder holding its weights (size reported), or ``None``.
        info: Anything else to report (source, settings, the exporter's parity).
        close: Frees the runtime (called once scoring is done).
    """

    logits: Callable[[list[int]], np.ndarray]
    artifact: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None


Variant = Callable[[Fixture, Path], Scorer]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- PyTorch ------------------------------------------------------------------------------------


def torch_scorer(model) -> Callable[[list[int]], np.ndarray]:
    import torch

    def logits(window: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(input_ids=torch.tensor([window])).logits[0].float().numpy()

    return logits


def reference(fx: Fixture) -> tuple[Scorer, list[tuple[list[int], list[int]]]]:
    """float32 PyTorch, the adapter attached unmerged (the exporter's parity reference), and
    the exporter's probes run on it."""
    from transformers import AutoConfig

    from adaptkit.api.nn import eos_ids

    model = adapted(fx.base, fx.adapter)
    config = AutoConfig.from_pretrained(fx.base)
    probe_runs = probes(model, int(config.vocab_size), eos_ids(config))
    info = {"source": "PyTorch + adapter unmerged"}
    return Scorer(torch_scorer(model), fx.base / "model.safetensors", info), probe_runs


def no_adapter(fx: Fixture, scratch: Path) -> Scorer:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fx.base, dtype="float32").eval()
    return Scorer(torch_scorer(model), fx.base / "model.safetensors", {"source": "PyTorch, base only"})


# -- ONNX Runtime GenAI -------------------------------------------------------------------------


def genai_scorer(folder: Path, info: dict[str, Any]) -> Scorer:
    from adaptkit_onnx.runtime.genai import GenaiModel

    runtime = GenaiModel(folder)
    info = {**info, "graph": matmul_nbits(folder)}

    def close() -> None:
        nonlocal runtime
        runtime = None

    return Scorer(lambda window: runtime.prefill_logits(window), folder, info, close)


def matmul_nbits(folder: Path) -> dict[str, Any]:
    """The ``MatMulNBits`` nodes of a graph: how many, and their bits/block size/accuracy level."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    out: dict[str, Any] = {"matmul_nbits_nodes": len(nodes)}
    for key in ("bits", "block_size", "accuracy_level"):
        values = sorted({helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == key})
        if nodes and key == "accuracy_level" and not values:
            values = [0]  # the builder leaves the attribute out at its default, 0 (unset)
        if values:
            out[key] = values[0] if len(values) == 1 else values
    return out


def onnx_export(precision: str) -> Variant:
    """``adaptkit export --onnx --precision P`` with every default but ``--min-agreement 0``."""

    def variant(fx: Fixture, scratch: Path) -> Scorer:
        out = scratch / f"onnx-{precision}"
        argv = [
            sys.executable, "-m", "adaptkit", "export", "--onnx", "--precision", precision,
            "--model", str(fx.base), "-a", str(fx.adapter), "-o", str(out), "--force", "--json",
            *(["--min-agreement", "0"] if precision != "fp32" else []),
        ]  # fmt: skip
        start = time.perf_counter()
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"export failed: {' '.join(argv)}\n{run.stderr[-3000:]}")
        seconds = time.perf_counter() - start
        report = json.loads(run.stdout)
        info = {
            "source": f"adaptkit export --onnx --precision {precision}",
            "build_s": round(seconds, 1),
            "exporter_parity": parity_summary(report["parity"]),
        }
        return genai_scorer(out, info)

    return variant


def merged_checkpoint(fx: Fixture, scratch: Path) -> Path:
    """``adaptkit export --merged``: the checkpoint an int4 export hands the builder."""
    folder = scratch / "merged"
    if not (folder / "config.json").is_file():
        argv = [sys.executable, "-m", "adaptkit", "export", "--merged", "--model", str(fx.base)]
        subprocess.run([*argv, "-a", str(fx.adapter), "-o", str(folder)], check=True, capture_output=True)
    return folder


#: The exporter's builder child, with ``KEY=VALUE`` builder options appended to its own.
_BUILDER_WITH_OPTIONS = """
import sys
import torch  # noqa: F401 (before onnxruntime_genai, as adaptkit_onnx does)
import onnxruntime_genai.models.builder as builder
from adaptkit_onnx.generation import builder_worker

extra = sys.argv[6:]
parse = builder.parse_extra_options


def with_extra(model_name, input_path, output_dir, precision, provider, cache_dir, options, *rest, **kw):
    options = [*(options or []), *extra]
    return parse(model_name, input_path, output_dir, precision, provider, cache_dir, options, *rest, **kw)


builder.parse_extra_options = with_extra
sys.exit(builder_worker.main(sys.argv[1:6]))
"""


def onnx_int4(block_size: int, accuracy_level: int) -> Variant:
    """An int4 graph with the builder's ``block_size``/``accuracy_level`` set, built as
    ``adaptkit export --onnx --precision int4`` builds it (see the module docstring)."""

    def variant(fx: Fixture, scratch: Path) -> Scorer:
        from transformers import AutoConfig

        from adaptkit_onnx.generation.builder import child_env, finish_config

        merged = merged_checkpoint(fx, scratch)
        out = scratch / f"onnx-int4-b{block_size}-acc{accuracy_level}"
        work = scratch / f"{out.name}-work"
        work.mkdir()
        argv = [
            sys.executable, "-c", _BUILDER_WITH_OPTIONS, str(merged), str(out), "int4", "cpu",
            str(work / "cache"), f"block_size={block_size}", f"accuracy_level={accuracy_level}",
        ]  # fmt: skip
        start = time.perf_counter()
        run = subprocess.run(argv, capture_output=True, text=True, cwd=work, env=child_env())
        if run.returncode != 0:
            raise SystemExit(
                f"builder failed (block {block_size}, level {accuracy_level}):\n{run.stdout[-3000:]}"
            )
        seconds = time.perf_counter() - start
        finish_config(out, AutoConfig.from_pretrained(fx.base), "cpu")
        info = {
            "source": "builder child on the export --merged checkpoint, "
            f"block_size={block_size} accuracy_level={accuracy_level}",
            "build_s": round(seconds, 1),
        }
        return genai_scorer(out, info)

    return variant


def probes(model, vocab: int, eos: set[int]) -> list[tuple[list[int], list[int]]]:
    """The exporter's parity probes: its random-token prompts and the reference's greedy tokens
    (:func:`adaptkit_onnx.parity.verify_generation`, which ``--min-agreement`` gates on)."""
    from adaptkit.api.nn import torch_greedy
    from adaptkit_onnx.parity import PROBE_NEW_TOKENS, probe_prompts, until_eos

    return [
        (p, until_eos(torch_greedy(model, p, PROBE_NEW_TOKENS, eos)[0], eos)) for p in probe_prompts(vocab)
    ]


def probe_agreement(scorer: Scorer, probe_runs: list[tuple[list[int], list[int]]]) -> float:
    """Teacher-forced top-1 agreement on the probes, computed as the exporter computes it: the
    variant reads prompt + the reference's tokens in one pass."""
    agree = total = 0
    for prompt, tokens in probe_runs:
        forced = scorer.logits(prompt + tokens)
        n = len(prompt)
        agree += int((forced[n - 1 : n - 1 + len(tokens)].argmax(-1) == np.asarray(tokens)).sum())
        total += len(tokens)
    return agree / max(total, 1)


def parity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The exporter's verdict numbers: agreement over all probe steps (as ``_judge_generation``)."""
    steps = sum(r["new_tokens"] for r in rows)
    return {
        "top1_agreement": round(sum(r["top1_agreement"] * r["new_tokens"] for r in rows) / max(steps, 1), 4),
        "steps": steps,
        "tokens_identical": f"{sum(r['tokens_identical'] for r in rows)}/{len(rows)}",
        "prefill_max_abs": round(max(r["prefill_max_abs"] for r in rows), 4),
    }


#: name → variant. The order is the table's.
# -- llama.cpp ----------------------------------------------------------------------------------


def gguf(kind: str) -> Variant:
    """The base as GGUF quantized to ``kind`` by llama.cpp's own quantizer (from the float32 GGUF),
    plus ``adaptkit export --gguf``'s adapter applied unmerged, run in llama.cpp."""

    def variant(fx: Fixture, scratch: Path) -> Scorer:
        from adaptkit_gguf.runtime import LlamaCppSession
        from benchmarks.gguf_models import base_gguf, quantized

        base = base_gguf(fx.base, "f32") if kind == "F32" else quantized(fx.base, kind, source="f32")
        out = scratch / "gguf-adapter"
        if not (out / "adapter.gguf").exists():
            argv = [sys.executable, "-m", "adaptkit", "export", "--gguf", "--model", str(fx.base)]
            subprocess.run([*argv, "-a", str(fx.adapter), "-o", str(out), "--force"], check=True)
        session = LlamaCppSession(
            base, [(out / "adapter.gguf", 1.0)], n_ctx=2048, logits_all=True, kv_f32=False
        )
        adapter_mib = round((out / "adapter.gguf").stat().st_size / 2**20, 2)
        info = {"source": f"llama.cpp {kind} base + adapter.gguf (unmerged)", "adapter_mib": adapter_mib}
        return Scorer(session.logits, base, info, session.close)

    return variant


VARIANTS: dict[str, Variant] = {
    "pytorch_fp32_no_adapter": no_adapter,
    "onnx_fp32": onnx_export("fp32"),
    "onnx_fp16": onnx_export("fp16"),
    "onnx_int4_b32_acc4": onnx_export("int4"),  # the export's defaults on the CPU provider
    "onnx_int4_b32_acc0": onnx_int4(32, 0),
    "onnx_int4_b64_acc4": onnx_int4(64, 4),
    "onnx_int4_b64_acc0": onnx_int4(64, 0),
    "onnx_int4_b128_acc4": onnx_int4(128, 4),
    "onnx_int4_b128_acc0": onnx_int4(128, 0),
    "gguf_q8_0": gguf("Q8_0"),
    "gguf_q4_k_m": gguf("Q4_K_M"),
    "gguf_q4_0": gguf("Q4_0"),
}


# -- scoring ------------------------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def weights_bytes(artifact: Path | None) -> int | None:
    if artifact is None:
        return None
    if artifact.is_file():
        return artifact.stat().st_size
    return sum((artifact / n).stat().st_size for n in WEIGHT_FILES if (artifact / n).is_file())


def score(
    scorer: Scorer,
    wins: list[list[int]],
    domains: list[str],
    ref: list[np.ndarray] | None,
    probe_runs: list[tuple[list[int], list[int]]],
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Run ``scorer`` on every window (one warm-up first) and on the probes; its numbers against
    ``ref`` (the reference's log-probabilities; ``None`` when scoring the reference itself)."""
    scorer.logits(wins[0])  # warm-up: session start, kernel selection
    start = time.perf_counter()
    logps = [log_softmax(scorer.logits(w)) for w in wins]
    seconds = time.perf_counter() - start
    probe = probe_agreement(scorer, probe_runs)
    scorer.close()
    nll: dict[str, list[float]] = {}
    agree = positions = 0
    kl_sum = 0.0
    for i, (w, lp) in enumerate(zip(wins, logps, strict=True)):
        if lp.shape != (len(w), lp.shape[-1]):
            raise SystemExit(f"window {i}: logits of shape {lp.shape} for {len(w)} tokens")
        targets = np.asarray(w[1:])
        nll.setdefault(domains[i], []).extend((-lp[np.arange(len(w) - 1), targets]).tolist())
        if ref is not None:
            agree += int((lp.argmax(-1) == ref[i].argmax(-1)).sum())
            positions += len(w)
            kl_sum += float((np.exp(ref[i]) * (ref[i] - lp)).sum())
    every = [x for v in nll.values() for x in v]
    out: dict[str, Any] = {
        "ppl": round(math.exp(sum(every) / len(every)), 4),
        "ppl_by_domain": {d: round(math.exp(sum(v) / len(v)), 4) for d, v in nll.items()},
        "score_s": round(seconds, 2),
        "tokens_per_s": round(sum(map(len, wins)) / seconds),
        "size_mib": None if (b := weights_bytes(scorer.artifact)) is None else round(b / 2**20, 2),
        **scorer.info,
    }
    if ref is None:
        out["probe_steps"] = sum(len(tokens) for _, tokens in probe_runs)
    else:
        out["probe_agreement"] = round(probe, 4)
        out["top1_agreement"] = round(agree / positions, 4)
        out["kl"] = float(f"{max(kl_sum / positions, 0.0):.3g}")  # >= 0 but for float rounding
    return out, logps


def main(argv=None) -> None:
    ap = parser(__doc__, "the tiny fixture (reuses every code path)")
    ap.add_argument("--variants", help="comma-separated subset of: " + ", ".join(VARIANTS))
    args = ap.parse_args(argv)
    import torch

    from adaptkit_onnx.parity import TOLERANCES

    torch.set_num_threads(max(1, torch.get_num_threads()))
    fx = fixture("quick" if args.quick else "full")
    wins, domains = fx.windows()
    chosen = args.variants.split(",") if args.variants else list(VARIANTS)
    log(f"fixture {fx.folder.name}: {len(wins)} windows of {len(wins[0])} tokens")
    cache_dir().mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    if args.variants and args.json and Path(args.json).exists():
        # A subset re-run updates its rows in the results file and keeps the others.
        kept = json.loads(Path(args.json).read_text())
        if kept.get("mode") == ("quick" if args.quick else "full"):
            rows = dict(kept.get("rows", {}))
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".quality-") as tmp:
        scratch = Path(tmp)
        ref_scorer, probe_runs = reference(fx)
        ref_row, ref = score(ref_scorer, wins, domains, None, probe_runs)
        log(f"reference: ppl {ref_row['ppl']}")
        for name in chosen:
            start = time.perf_counter()
            row, _ = score(VARIANTS[name](fx, scratch), wins, domains, ref, probe_runs)
            row["ppl_delta"] = round(row["ppl"] - ref_row["ppl"], 4)
            row["ppl_delta_pct"] = round(100 * (row["ppl"] / ref_row["ppl"] - 1), 3)
            rows[name] = row
            probe = row["probe_agreement"]
            log(
                f"{name}: top-1 {row['top1_agreement']:.2%}, ppl {row['ppl']} "
                f"({row['ppl_delta_pct']:+.2f}%), KL {row['kl']}, probe agreement {probe}, "
                f"{time.perf_counter() - start:.0f} s"
            )
    info = fx.info
    emit(
        "quality",
        {
            **run_info(
                args.quick, "adaptkit", "onnxruntime-genai-cuda", "onnxruntime-gpu", "torch", "transformers"
            ),
            "fixture": {
                "name": info["name"],
                "folder": fx.folder.name,
                "parameters": info["base"]["parameters"],
                "spec": info["spec"],
                "python": info["python"],
                "corpus": info["corpus"],
                "base": {k: v for k, v in info["base"].items() if k != "loss_curve"},
                "adapter": info["adapter"],
                "held_out_loss": info["held_out_loss"],
                "build_seconds": info["build_seconds"],
            },
            "windows": {"count": len(wins), "tokens": len(wins[0]), "domains": sorted(set(domains))},
            "reference": ref_row,
            "rows": rows,
            "default_floors": {p: TOLERANCES["generation", p].min_agreement for p in ("fp16", "int4")},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
