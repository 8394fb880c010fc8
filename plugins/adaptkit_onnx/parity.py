"""Parity: an export is kept only if it computes what PyTorch computes with the adapters unmerged.

Both graphs are checked here, against one tolerance table (:data:`TOLERANCES`). The
reference is always the base model in PyTorch with each adapter attached as LoRA layers
(:func:`attach_reference`), never the baked weights: a bake that went wrong would otherwise
agree with itself.

**Logits-only graph** (onnxruntime, :func:`probes`): two input shapes, ``1×7`` and ``3×16``
with one right-padded row. Over the real (unpadded) positions,

    max_abs = max |ℓ_ort − ℓ_ref|,   max_rel = max_abs / max |ℓ_ref|

and ``max_abs`` must stay within ``atol`` (1e-4 float32, 5e-2 float16).

**Generation graph** (ONNX Runtime GenAI, :func:`verify_generation`): greedy continuations
of :data:`PROBE_NEW_TOKENS` tokens from prompts of :data:`PROBE_LENGTHS` tokens. Each side
gives, per prompt, its tokens and the prefill logits (every prompt position). Compared are

- the free-running tokens (the decode path with its KV cache is what a user runs);
- the prefill logits, ``max |Δ|`` over all positions;
- teacher-forced top-1 agreement: the export reads the *reference* sequence (prompt +
  PyTorch's tokens ``t_1..t_k``) in one pass, and

      agreement = (1/k) · Σ_j [argmax ℓ_ort(position n+j−2) = t_j]

  Free-running sequences part for good at the first differing token, so only teacher
  forcing gives a per-step agreement that means something for fp16 and int4.

``fp32`` passes when every probe's tokens are identical and the prefill logits agree within
``atol``; ``fp16``/``int4`` when the agreement over all probe steps reaches ``min_agreement``.

In both graphs the adapters must move the reference's logits (a parity test that cannot fail
is worthless): by more than ``atol`` for a baked logits-only graph, by more than
:data:`EFFECT_FLOOR` for the generation graph. Any failure writes nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.api import Adapter, AdaptkitError, WeightedAdapter

if TYPE_CHECKING:
    import numpy as np
    import torch

# -- the tolerance table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """The default pass marks of one (graph, precision); ``--atol`` and ``--min-agreement``
    override them.

    Attributes:
        atol: The largest ``max |Δlogits|`` accepted. For an fp16/int4 generation graph it is
            reported, not enforced (agreement decides).
        min_agreement: The floor on teacher-forced top-1 agreement over all probe steps
            (generation graph only; ``None`` for the logits-only graph).
    """

    atol: float
    min_agreement: float | None = None


#: Every default tolerance, by ``(graph, precision)``: the logits-only graph by ``--dtype``,
#: the generation graph by ``--precision``. The generation graph's 1e-3 is above the
#: logits-only graph's 1e-4 because the fused attention kernels sum in another order, and at
#: 1.1B parameters logits reach |20| (measured: docs/benchmarks.md). An fp32 generation graph
#: must reproduce every greedy token, hence agreement 1.0. The fp16/int4 floors are set from a
#: trained model (docs/benchmarks.md, "Quality of quantized exports"): over the 36 probe steps
#: every int4 graph (block size 32-128, accuracy level 0 or 4) agreed on >= 94.4% (2 flips),
#: fp16 on 100%, and the same model without its adapter on 77.8% (8 flips). int4's 0.8 refuses
#: 8+ flips (that adapter-less export, a broken graph) and leaves 4x the measured int4 noise;
#: fp16's 0.9 refuses 4+.
TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("logits", "float32"): Tolerance(atol=1e-4),
    ("logits", "float16"): Tolerance(atol=5e-2),
    ("generation", "fp32"): Tolerance(atol=1e-3, min_agreement=1.0),
    ("generation", "fp16"): Tolerance(atol=1e-3, min_agreement=0.9),
    ("generation", "int4"): Tolerance(atol=1e-3, min_agreement=0.8),
}
#: A generation graph's adapters must move the PyTorch reference's logits by more than this
#: (fp32 on both sides).
EFFECT_FLOOR = 1e-4


# -- the reference ------------------------------------------------------------------------------


def attach_reference(model: Any, adapter: Adapter | WeightedAdapter, *, dtype: str | None = None) -> None:
    """Attach ``adapter`` to ``model`` unmerged, as the reference an export must match.

    A :class:`WeightedAdapter` (one adapter of a ``--lora-inputs`` export) contributes
    ``w·s·B·A``: its weight multiplies every layer's scale ``s``. A bare :class:`Adapter` (the
    exact combination a baked export holds) is itself at weight 1.

    Args:
        model: The base model, with no LoRA layers yet.
        adapter: What to attach.
        dtype: The LoRA layers' dtype (``"fp32"``; ``None`` keeps the factors' own).

    Raises:
        TypeError: ``adapter`` is neither record.
    """
    from adaptkit.api import nn as lora

    if isinstance(adapter, Adapter):
        adapter = WeightedAdapter(adapter)
    if not isinstance(adapter, WeightedAdapter):
        raise TypeError(f"expected an Adapter or a WeightedAdapter, got {type(adapter).__name__}")
    lora.load(model, adapter.adapter, dtype=dtype)
    for layer in lora.lora_layers(model).values():
        layer.scale *= adapter.weight  # exact at weight 1


# -- the logits-only graph (onnxruntime) --------------------------------------------------------


def providers() -> list[str]:
    """CUDA when a GPU is really usable (onnxruntime-gpu lists it regardless), else CPU."""
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Idle ORT threads spin by default; with several sessions alive (merged, base) the
    # spinning ones steal cores from the one being timed.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers())


def probes(vocab: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The logits-only graph's inputs: two shapes; the second batch has a right-padded row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, vocab, (1, 7), generator=g)
    b = torch.randint(0, vocab, (3, 16), generator=g)
    mask_b = torch.ones_like(b)
    mask_b[1, 11:] = 0
    return [(a, torch.ones_like(a)), (b, mask_b)]


def torch_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().numpy()


def ort_logits(sess: Any, ids: torch.Tensor, mask: torch.Tensor, run_options: Any = None) -> np.ndarray:
    import numpy as np

    feed = {
        "input_ids": ids.numpy().astype(np.int64),
        "attention_mask": mask.numpy().astype(np.int64),
    }
    return np.asarray(sess.run(["logits"], feed, run_options)[0], dtype=np.float32)


def compare(got: np.ndarray, ref: np.ndarray, mask: torch.Tensor) -> dict[str, float]:
    """Max absolute and relative error over real (unpadded) positions."""
    import numpy as np

    valid = mask.numpy().astype(bool)
    diff = np.abs(got - ref)[valid]
    scale = float(np.abs(ref[valid]).max()) or 1.0
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max()) / scale}


def median_latencies(
    fns: dict[str, Callable[[], Any]], *, budget_s: float = 1.5, warmup: int = 3
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin so drift in
    machine load affects all of them alike; as many rounds as fit in ``budget_s`` (30–500)."""
    start = time.perf_counter()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = (time.perf_counter() - start) / warmup
    repeat = max(30, min(500, int(budget_s / max(per_round, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# -- the generation graph (ONNX Runtime GenAI) --------------------------------------------------

#: Probe prompts: lengths chosen to cover a one-token prompt, a short and a longer prefill.
PROBE_LENGTHS = (1, 6, 17)
PROBE_NEW_TOKENS = 12


def probe_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    """Seeded random token-id prompts of :data:`PROBE_LENGTHS` (tokens below ``vocab``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROBE_LENGTHS]


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """``tokens`` up to and including the first end-of-sequence token."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def torch_prefill_logits(model: Any, sequence: list[int]) -> np.ndarray:
    """Logits at every position of ``sequence`` (one forward, no cache)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([sequence], device=device)).logits[0].float().cpu().numpy()


def compare_runs(
    reference: Iterable[tuple[list[int], list[int], np.ndarray]],
    exported: Iterable[tuple[list[int], np.ndarray, np.ndarray]],
    eos: set[int],
) -> list[dict[str, Any]]:
    """One row per prompt.

    Args:
        reference: ``(prompt, tokens, prefill logits)`` from PyTorch.
        exported: ``(tokens, prefill logits, logits over the reference sequence)`` from the export.
        eos: End-of-sequence ids (sequences are compared up to the first).
    """
    import numpy as np

    rows = []
    for (prompt, ref_tokens, ref_first), (tokens, first, forced) in zip(reference, exported, strict=True):
        ref_tokens, tokens = until_eos(ref_tokens, eos), until_eos(tokens, eos)
        n = len(prompt)
        # forced[p] predicts the token at p + 1: positions n-1 .. n+k-2 predict the k new tokens.
        predicted = forced[n - 1 : n - 1 + len(ref_tokens)].argmax(-1).tolist()
        agree = sum(int(a == b) for a, b in zip(predicted, ref_tokens, strict=True))
        same_prefix = 0
        for a, b in zip(tokens, ref_tokens, strict=False):
            if a != b:
                break
            same_prefix += 1
        rows.append(
            {
                "prompt_tokens": n,
                "new_tokens": len(ref_tokens),
                "tokens_identical": tokens == ref_tokens,
                "matching_prefix": same_prefix,
                "top1_agreement": agree / max(len(ref_tokens), 1),
                "prefill_max_abs": float(np.abs(first - ref_first).max()),
                "prefill_scale": float(np.abs(ref_first).max()),
            }
        )
    return rows


def verify_generation(
    folder: Path,
    config: Any,
    variants: dict[str, Adapter | WeightedAdapter | None],
    out: Path,
    options: dict[str, Any],
    log: Any,
    *,
    adapter_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Compare the export with PyTorch on probe prompts, for each named variant.

    At most one model is in memory: the PyTorch reference runs every variant and is freed
    before ONNX Runtime GenAI loads the export.

    Args:
        folder: The base model folder (the reference loads from it, once).
        config: Its Hugging Face config.
        variants: ``name -> adapter`` to attach unmerged (:func:`attach_reference`); ``None``
            for the plain base.
        out: The exported folder.
        options: ``precision``, ``device``, ``atol``, ``min_agreement``.
        log: Progress lines.
        adapter_files: ``name -> .onnx_adapter`` to activate per variant (``--lora-inputs``).

    Raises:
        AdaptkitError: parity fails, or an adapter does not change the output.
    """
    import torch

    from adaptkit.api import nn as lora
    from adaptkit.api.models import load_causal_lm, load_streamed
    from adaptkit.api.nn import eos_ids, torch_greedy
    from adaptkit_onnx.memory import release_memory
    from adaptkit_onnx.runtime.genai import GenaiModel

    precision = options["precision"]
    prompts = probe_prompts(int(config.vocab_size))
    eos = eos_ids(config)
    steps = PROBE_NEW_TOKENS

    log("parity: PyTorch reference (adapters unmerged)")
    # Tensor by tensor: from_pretrained would keep most of a bf16 checkpoint's pages resident
    # on top of the float32 model (measured at 1.1B: 6.5 GB for a 4.4 GB model).
    model = load_streamed(folder, torch.float32) or load_causal_lm(folder, dtype="fp32")[0]
    base_first = [torch_prefill_logits(model, p) for p in prompts]
    references: dict[str, list[Any]] = {}
    speed: dict[str, list[tuple[int, float]]] = {"pytorch_unmerged": [], "onnx": []}
    effects: dict[str, float] = {}
    for name, adapter in variants.items():
        if adapter is not None:
            attach_reference(model, adapter, dtype="fp32")
        rows = []
        start = time.perf_counter()
        for p in prompts:
            tokens, first = torch_greedy(model, p, steps, eos)
            rows.append((p, tokens, first))
        speed["pytorch_unmerged"].append((sum(len(r[1]) for r in rows), time.perf_counter() - start))
        references[name] = rows
        effects[name] = max(float(abs(r[2] - b).max()) for r, b in zip(rows, base_first, strict=True))
        if adapter is not None:
            lora.detach(model)
    del model
    release_memory()

    log(f"parity: ONNX Runtime GenAI ({precision})")
    # A CUDA-flavoured graph is checked on the CPU provider where there is no GPU (ONNX Runtime
    # runs the same operators there): it can be built and verified on a CPU-only machine.
    verified_on = "cuda" if options["device"] == "cuda" and torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {}
    try:
        runtime = GenaiModel(out, verified_on)
        for name, path in (adapter_files or {}).items():
            runtime.load_adapter(path, name)
        for name, rows in references.items():
            active = name if adapter_files and name in adapter_files else None
            exported = []
            for prompt, tokens, _ in rows:
                start = time.perf_counter()
                got, first = runtime.generate(prompt, steps, adapter=active)
                speed["onnx"].append((len(got), time.perf_counter() - start))
                forced = runtime.prefill_logits(prompt + tokens, adapter=active)
                exported.append((got, first, forced))
            results[name] = compare_runs(rows, exported, eos)
    except RuntimeError as exc:  # ONNX Runtime (GenAI) refusing or failing to run the graph
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdaptkitError(
            f"ONNX Runtime GenAI could not run the exported graph: {first_line}; nothing was written"
        ) from None
    runtime = None
    release_memory()

    report: dict[str, Any] = {
        "parity": [{"variant": name, **row} for name, rows in results.items() for row in rows],
        # Probe-sized runs (a few dozen tokens), a hint only: benchmarks/ measures speed properly.
        "probe_tokens_per_s": {
            side: sum(n for n, _ in runs) / max(sum(t for _, t in runs), 1e-9) for side, runs in speed.items()
        },
        "adapter_effect_max_abs": effects,
        "atol": options["atol"],
        "min_agreement": options["min_agreement"],
        "verified_on": verified_on,
    }
    for name, rows in results.items():
        _judge_generation(name, rows, options, log)
        if variants[name] is not None:
            check_effect(effects[name], EFFECT_FLOOR, variant=name)
    return report


def _judge_generation(name: str, rows: list[dict[str, Any]], options: dict[str, Any], log: Any) -> None:
    """Log one variant's parity line, then refuse it if it misses its tolerance: fp32 by its
    greedy tokens and prefill ``atol``, fp16/int4 by the agreement over all probe steps,

        agreement = Σ_prompts top1_agreement · new_tokens / Σ_prompts new_tokens
    """
    precision, atol, floor = options["precision"], options["atol"], options["min_agreement"]
    worst = max(r["prefill_max_abs"] for r in rows)
    steps_total = sum(r["new_tokens"] for r in rows)
    agreement = sum(r["top1_agreement"] * r["new_tokens"] for r in rows) / max(steps_total, 1)
    log(
        f"parity {name:>12}: tokens identical {sum(r['tokens_identical'] for r in rows)}/{len(rows)}, "
        f"top-1 agreement {agreement:.1%}, prefill max |Δlogits| {worst:.2e}"
    )
    if precision == "fp32":
        if not all(r["tokens_identical"] for r in rows):
            bad = next(r for r in rows if not r["tokens_identical"])
            raise AdaptkitError(
                f"{name}: the exported model's greedy tokens differ from PyTorch's after "
                f"{bad['matching_prefix']} of {bad['new_tokens']} (prompt of {bad['prompt_tokens']} "
                "tokens); nothing was written"
            )
        if worst > atol:
            raise AdaptkitError(
                f"{name}: ONNX Runtime logits differ from PyTorch by {worst:.3g} > atol {atol:g}; "
                "nothing was written",
                hint="raise --atol if this is expected",
            )
    elif agreement < floor:
        raise AdaptkitError(
            f"{name}: {precision} top-1 agreement with PyTorch is {agreement:.1%} < "
            f"{floor:.0%}; nothing was written",
            hint="lower --min-agreement if this loss is acceptable, or export fp32",
        )


# -- verdicts shared by both graphs -------------------------------------------------------------


def check_logits(parity: list[dict[str, Any]], atol: float, *, hint: str | None = None) -> None:
    """Refuse a logits-only graph whose worst ``max_abs`` over the parity rows exceeds ``atol``."""
    worst = max(p["max_abs"] for p in parity)
    if worst > atol:
        raise AdaptkitError(
            f"ONNX Runtime output differs from PyTorch by {worst:.3g} > atol {atol:g}; nothing was written",
            hint=hint,
        )


def check_effect(effect: float, floor: float, *, variant: str | None = None) -> None:
    """Refuse adapters that move the reference's logits by no more than ``floor``: against such
    a reference the parity check could not fail."""
    if effect <= floor:
        where = "" if variant is None else f"{variant}: "
        raise AdaptkitError(
            f"{where}the adapters do not change the model's output (max |Δlogits| = {effect:.3g}); "
            "nothing was written",
            hint="check the adapter matches this base model",
        )
