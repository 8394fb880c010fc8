"""The baked logits-only graph: one model in memory, the reference taken before the bake.

The probes' base logits and the unmerged reference (adapters attached as LoRA layers, float32)
are computed and kept; the LoRA layers are then baked into their weights, ``W ← W + s·B·A``,
and removed, and that same model is cast and exported. The export must reproduce the kept
reference within ``atol`` (:mod:`adaptkit_onnx.parity`), and the adapters must have moved it by
more than ``atol``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_baked(
    base: Any,
    adapter: Any,
    out: Path,
    *,
    torch_dtype: Any,
    opset: int | None,
    atol: float,
    verify: bool,
    external_data: str,
) -> dict[str, Any]:
    """Reference first, then bake in place: one copy of the model, whatever the checks.

    Args:
        base: The base model, loaded in float32 (or ``--base-dtype``).
        adapter: The exact combination of the export's adapters, or ``None`` (the plain base).
        out: The staging folder of the atomic write.
        torch_dtype: The graph's dtype.
        opset: ``--opset`` (checked), or ``None`` for the exporter's own.
        atol: The largest ``max |Δlogits|`` accepted.
        verify: Check parity and time both sides (``--no-verify`` skips both).
        external_data: ``auto``, ``always`` or ``never``.

    Returns:
        The report's ``files``, and with ``verify`` its ``parity``, ``adapter_effect_max_abs``
        and ``latency``.
    """
    import torch

    from adaptkit.api import nn as lora
    from adaptkit.api.nn import bake_adapter
    from adaptkit_onnx import parity as v
    from adaptkit_onnx.logits.graph import export_causal_lm

    vocab = base.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    result: dict[str, Any] = {}
    references, effect, times = [], 0.0, {}
    if verify:
        base_logits = [v.torch_logits(base, i, m) for i, m in v.probes(vocab)]
        if adapter is not None:
            v.attach_reference(base, adapter, dtype="fp32")
        for (i, m), plain in zip(v.probes(vocab), base_logits, strict=True):
            ref = v.torch_logits(base, i, m)
            references.append((i, m, ref))
            effect = max(effect, v.compare(plain, ref, m)["max_abs"])
        times = v.median_latencies({"pytorch_unmerged_s": lambda: v.torch_logits(base, ids, mask)})
        if adapter is not None:
            lora.detach(base, bake_first=True)
    elif adapter is not None:
        bake_adapter(base, adapter)
    base.to(torch_dtype)
    info = export_causal_lm(base, out / "model.onnx", opset=opset, external_data=external_data)
    result["files"] = info
    if not verify:
        return result
    sess = v.session(out / "model.onnx")
    parity = [
        {"shape": list(i.shape), **v.compare(v.ort_logits(sess, i, m), ref, m)} for i, m, ref in references
    ]
    result["parity"] = parity
    result["adapter_effect_max_abs"] = effect
    v.check_logits(parity, atol, hint="raise --atol if this precision is expected")
    if adapter is not None:
        v.check_effect(effect, atol)  # the baked graph's effect floor is its own atol
    times.update(v.median_latencies({"ort_merged_s": lambda: v.ort_logits(sess, ids, mask)}))
    result["latency"] = {
        "input_shape": list(ids.shape),
        **times,
        "pytorch_unmerged_over_ort_merged": times["pytorch_unmerged_s"] / times["ort_merged_s"],
    }
    return result
