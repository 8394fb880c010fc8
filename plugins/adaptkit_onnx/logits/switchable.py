"""The switchable logits-only graph (``--lora-inputs``): one base graph, many hot-swappable adapters.

The base is exported once with every target's LoRA factors as graph inputs (rank ``R`` = the
largest rank among the adapters; smaller adapters are zero-padded, which is exact), and each
adapter is written as an ONNX Runtime ``.onnx_adapter`` file holding its factors with the
scale and weight folded into ``B``. ``adapters.json`` maps adapters to input names and is
checked against the graph. Serving::

    import onnxruntime as ort
    sess = ort.InferenceSession("model.onnx")
    adapter = ort.LoraAdapter(); adapter.Load("skill-a.onnx_adapter")
    opts = ort.RunOptions(); opts.add_active_adapter(adapter)
    logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask}, opts)[0]
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptkit.api import AdaptkitError, WeightedAdapter


def _factors(pair: Any, weight: float, rank: int, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """One target's input values, zero-padded to rank ``R``: ``A`` (``R × in``) and ``w·s·B``
    (``out × R``), so that the graph's ``x·Aᵀ·(w·s·B)ᵀ`` is the adapter's weighted update."""
    A = torch.zeros(rank, pair.in_features, dtype=torch.float32)
    B = torch.zeros(pair.out_features, rank, dtype=torch.float32)
    A[: pair.rank] = pair.A.float()
    B[:, : pair.rank] = pair.B.float() * (pair.scale * weight)
    return A.to(dtype).numpy(), B.to(dtype).numpy()


def export_switchable(
    base: Any,
    adapters: list[WeightedAdapter],
    out: Path,
    *,
    torch_dtype: torch.dtype,
    opset: int | None,
    atol: float,
    verify: bool,
    external_data: str,
) -> dict[str, Any]:
    """Export ``base`` with LoRA inputs and one ``.onnx_adapter`` per adapter into ``out``.

    With ``verify``, the base (no adapter active) and each adapter (activated per run) must
    match PyTorch within ``atol`` (:mod:`adaptkit_onnx.parity`); the reference is a copy of
    ``base`` with that adapter attached unmerged at its weight.

    Returns:
        The report's ``files``, ``lora_inputs`` and, with ``verify``, ``parity``.
    """
    import onnxruntime as ort

    from adaptkit.api.nn import resolve_targets
    from adaptkit_onnx import parity as v
    from adaptkit_onnx.adapter_files import check_switchable, manifest_entry, write_onnx_adapter
    from adaptkit_onnx.logits.graph import export_causal_lm, lora_input_names

    files = check_switchable(adapters)
    shapes: dict[str, tuple[int, int]] = {}
    for a in adapters:
        resolve_targets(base, a.adapter)  # every target exists with the right shape
        for target, pair in a.adapter.targets.items():
            shapes[target] = (pair.out_features, pair.in_features)
    rank = max(p.rank for a in adapters for p in a.adapter.targets.values())
    graph = copy.deepcopy(base).to(torch_dtype)
    info = export_causal_lm(
        graph,
        out / "model.onnx",
        opset=opset,
        lora_shapes=shapes,
        rank=rank,
        external_data=external_data,
    )
    np_dtype = np.float16 if torch_dtype == torch.float16 else np.float32
    manifest: dict[str, Any] = {
        "model": "model.onnx",
        "rank": rank,
        "inputs": {
            t: dict(zip(("lora_A", "lora_B"), lora_input_names(t), strict=True)) for t in sorted(shapes)
        },
        "adapters": {},
    }
    for a in adapters:
        params = {}
        for target, pair in sorted(a.adapter.targets.items()):
            A, B = _factors(pair, a.weight, rank, torch_dtype)
            name_a, name_b = lora_input_names(target)
            params[name_a], params[name_b] = A.astype(np_dtype), B.astype(np_dtype)
        write_onnx_adapter(out / files[a.name], params)
        manifest["adapters"][a.name] = manifest_entry(a, files[a.name])
    check_manifest(out, manifest)
    (out / "adapters.json").write_text(json.dumps(manifest, indent=2) + "\n")
    result: dict[str, Any] = {
        "files": info,
        "lora_inputs": {
            "targets": len(shapes),
            "rank": rank,
            "adapters": list(manifest["adapters"]),
        },
    }
    if not verify:
        return result
    sess = v.session(out / "model.onnx")
    vocab = base.get_input_embeddings().num_embeddings
    parity = []
    for ids, mask in v.probes(vocab):  # no adapter active: the base model
        parity.append(
            {
                "adapter": "(none)",
                "shape": list(ids.shape),
                **v.compare(v.ort_logits(sess, ids, mask), v.torch_logits(base, ids, mask), mask),
            }
        )
    for a in adapters:
        reference = copy.deepcopy(base)
        v.attach_reference(reference, a)  # with the manifest's weight
        adapter = ort.LoraAdapter()
        adapter.Load(str(out / manifest["adapters"][a.name]["file"]))
        opts = ort.RunOptions()
        opts.add_active_adapter(adapter)
        for ids, mask in v.probes(vocab):
            ref = v.torch_logits(reference, ids, mask)
            row = {
                "adapter": a.name,
                "shape": list(ids.shape),
                **v.compare(v.ort_logits(sess, ids, mask, opts), ref, mask),
                "effect_max_abs": v.compare(v.torch_logits(base, ids, mask), ref, mask)["max_abs"],
            }
            parity.append(row)
    result["parity"] = parity
    v.check_logits(parity, atol)
    return result


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Every input the manifest names exists in the graph with the shape the adapters have."""
    import onnx

    graph = onnx.load(str(out / manifest["model"]), load_external_data=False).graph
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    for target, names in manifest["inputs"].items():
        for name in names.values():
            if name not in dims:
                raise AdaptkitError(f"graph has no input {name!r}", key=target)
    import onnxruntime as ort

    for name, entry in manifest["adapters"].items():
        params = ort.AdapterFormat.read_adapter(str(out / entry["file"])).get_parameters()
        for pname, value in params.items():
            if pname not in dims or list(value.shape()) != dims[pname]:
                raise AdaptkitError(f"adapter {name!r} parameter {pname} does not fit the graph input")
