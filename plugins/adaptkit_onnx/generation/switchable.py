"""``--onnx --lora-inputs`` for generation: one KV-cache graph, adapters switched per request.

The model builder writes the base graph with q/k/v kept apart. Every targeted projection's
``MatMul`` (``MatMulNBits`` for int4) then gets a LoRA branch whose factors are graph inputs::

    y = x·Wᵀ  →  y = x·Wᵀ + (x · lora_A) · lora_B      lora_A = Aᵀ [in, R],
                                                       lora_B = (w·s·B)ᵀ [R, out]

``R`` is the largest rank among the adapters; smaller ones are zero-padded (exact). Each input
also has a zero initializer of its name, so with no adapter active the graph is the base
model. A target the builder splits (Phi-3's ``qkv_proj`` → q/k/v, ``gate_up_proj`` →
gate/up) gets one branch per part: ``A`` shared, ``B``'s rows split. Each adapter becomes an
``.onnx_adapter`` file that ONNX Runtime GenAI activates per generator::

    adapters = og.Adapters(model); adapters.load("skill-a.onnx_adapter", "skill-a")
    generator.set_active_adapter(adapters, "skill-a")
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from adaptkit.api import AdaptkitError, WeightedAdapter

_TARGET = re.compile(r"^(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
_SPLITS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def export_switchable(
    folder: Path, config: Any, adapters: list[Any], out: Path, options: dict[str, Any], log: Any
) -> dict[str, Any]:
    from adaptkit.api.files import scratch_directory
    from adaptkit.api.models import meta_model
    from adaptkit.api.nn import resolve_targets
    from adaptkit_onnx.adapter_files import check_switchable, manifest_entry
    from adaptkit_onnx.generation.builder import finish_config, run_builder
    from adaptkit_onnx.parity import verify_generation
    from adaptkit_onnx.runtime.export_folder import check_written_export

    files = check_switchable(adapters)
    skeleton = meta_model(folder)
    for a in adapters:
        if skeleton is not None:
            resolve_targets(skeleton, a.adapter)  # every target exists with the right shape
        for target in a.adapter.targets:
            if not _TARGET.match(target):
                raise AdaptkitError(
                    f"target {target} is not a projection inside a decoder layer, which is all a "
                    "--lora-inputs generation graph can switch",
                    key=a.name,
                    hint="export this adapter merged (--onnx without --lora-inputs)",
                )
    precision, device = options["precision"], options["device"]
    with scratch_directory(out.parent) as scratch:  # pid-named: a killed run's is swept
        log(f"building the {precision} base generation graph with ONNX Runtime GenAI's model builder")
        build = run_builder(
            folder, out, precision, device, scratch, separate_projections=True, int4=options.get("int4")
        )
    finish_config(out, config, device)
    rank = max(p.rank for a in adapters for p in a.adapter.targets.values())
    shapes = {t: (p.out_features, p.in_features) for a in adapters for t, p in a.adapter.targets.items()}
    inputs, np_dtype = add_lora_branches(out / "model.onnx", shapes, rank, config)
    manifest: dict[str, Any] = {
        "model": "model.onnx",
        "rank": rank,
        "layout": "y += (x @ lora_A) @ lora_B; lora_A = A^T [in, R], "
        "lora_B = (weight * scale * B)^T [R, out]",
        "inputs": {t: [n for part in parts for n in part[1:3]] for t, parts in sorted(inputs.items())},
        "adapters": {},
    }
    paths = {}
    for a in adapters:
        path = out / files[a.name]
        write_adapter_file(path, a, inputs, rank, np_dtype)
        paths[a.name] = path
        manifest["adapters"][a.name] = manifest_entry(a, files[a.name])
    (out / "adapters.json").write_text(json.dumps(manifest, indent=2) + "\n")
    report: dict[str, Any] = {
        "graph": "generation",
        "precision": precision,
        "device": device,
        "builder": build,
        "lora_inputs": {"targets": len(shapes), "rank": rank, "adapters": list(manifest["adapters"])},
        "tokenizer": check_written_export(out),
    }
    if options.get("verify", True):
        variants: dict[str, Any] = {"(none)": None, **{a.name: a for a in adapters}}
        report.update(verify_generation(folder, config, variants, out, options, log, adapter_files=paths))
    return report


def _graph_parts(target: str, pair_out: int, config: Any) -> list[tuple[str, int, int]]:
    """``[(projection path, first row of B, rows)]`` the target's update lands on."""
    layer, block, proj = _TARGET.match(target).groups()  # type: ignore[union-attr]
    prefix = f"/model/layers.{layer}/{'attn' if block == 'self_attn' else 'mlp'}/"
    if proj not in _SPLITS:
        return [(prefix + proj, 0, pair_out)]
    from adaptkit_onnx.generation.builder import head_size

    heads, size = int(config.num_attention_heads), head_size(config)
    kv = int(getattr(config, "num_key_value_heads", None) or heads) * size
    sizes = [heads * size, kv, kv] if proj == "qkv_proj" else [pair_out // 2, pair_out // 2]
    parts, row = [], 0
    for name, rows in zip(_SPLITS[proj], sizes, strict=True):
        parts.append((prefix + name, row, rows))
        row += rows
    return parts


def add_lora_branches(
    path: Path, shapes: dict[str, tuple[int, int]], rank: int, config: Any
) -> tuple[dict[str, list[tuple[str, str, str, int, int]]], Any]:
    """Rewrite ``path`` in place with a LoRA branch on every target (see the module docstring).

    Returns:
        ``target -> [(graph node, lora_A input, lora_B input, first row, rows)]`` and the
        numpy dtype of the branch (the graph's activation dtype).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    logits = next(o for o in graph.output if o.name == "logits")
    elem = logits.type.tensor_type.elem_type
    np_dtype = np.float16 if elem == TensorProto.FLOAT16 else np.float32
    by_prefix: dict[str, Any] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "MatMulNBits"):
            by_prefix.setdefault(node.name.rsplit("/", 1)[0] + "/", []).append(node)
    inputs: dict[str, list[tuple[str, str, str, int, int]]] = {}
    branches: dict[str, list[Any]] = {}  # matmul node name -> new nodes after it
    for target, (out_f, in_f) in sorted(shapes.items()):
        for node_prefix, first_row, rows in _graph_parts(target, out_f, config):
            nodes = by_prefix.get(node_prefix + "/", [])
            if len(nodes) != 1:
                raise AdaptkitError(
                    f"the generation graph has no single projection {node_prefix} for target {target}",
                    key=target,
                    hint="export merged (--onnx without --lora-inputs)",
                )
            node = nodes[0]
            stem = node_prefix.strip("/").replace("/", ".")
            name_a, name_b = f"{stem}.lora_A", f"{stem}.lora_B"
            inputs.setdefault(target, []).append((node.name, name_a, name_b, first_row, rows))
            for name, dims in ((name_a, [in_f, rank]), (name_b, [rank, rows])):
                graph.input.append(helper.make_tensor_value_info(name, elem, dims))
                graph.initializer.append(numpy_helper.from_array(np.zeros(dims, dtype=np_dtype), name))
            y = node.output[0]
            low, delta, summed = f"{stem}/lora/A", f"{stem}/lora/B", f"{stem}/lora/Add"
            branches[node.name] = [
                helper.make_node("MatMul", [node.input[0], name_a], [low + "/output_0"], name=low),
                helper.make_node("MatMul", [low + "/output_0", name_b], [delta + "/output_0"], name=delta),
                helper.make_node("Add", [y, delta + "/output_0"], [summed + "/output_0"], name=summed),
            ]
            for consumer in graph.node:  # everything that read y now reads y + Δy
                for i, name in enumerate(consumer.input):
                    if name == y:
                        consumer.input[i] = summed + "/output_0"
            for out in graph.output:
                if out.name == y:
                    raise AdaptkitError(f"projection {node.name} is a graph output")  # a builder change
    ordered = []
    for node in graph.node:
        ordered.append(node)
        ordered.extend(branches.get(node.name, []))
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.save(model, str(path))
    return inputs, np_dtype


def write_adapter_file(
    path: Path,
    named: WeightedAdapter,
    inputs: dict[str, list[tuple[str, str, str, int, int]]],
    rank: int,
    np_dtype: Any,
) -> None:
    """One ``.onnx_adapter``: this adapter's value of each branch input (the graph's zero
    default stands in where it has no target). Per part of a target, rows ``first..first+rows``
    of ``B``, zero-padded to rank ``R``::

        lora_A = Aᵀ [in, R],   lora_B = (w·s·B[first : first + rows])ᵀ [R, rows]
    """
    from adaptkit_onnx.adapter_files import write_onnx_adapter

    params: dict[str, Any] = {}
    for target, parts in inputs.items():
        pair = named.adapter.targets.get(target)
        if pair is None:  # the graph's zero default stands in
            continue
        for _, name_a, name_b, first_row, rows in parts:
            A = np.zeros((pair.in_features, rank), dtype=np.float32)
            B = np.zeros((rank, rows), dtype=np.float32)
            A[:, : pair.rank] = pair.A.float().numpy().T
            scaled = pair.B.float().numpy()[first_row : first_row + rows] * (pair.scale * named.weight)
            B[: pair.rank] = scaled.T
            params[name_a] = A.astype(np_dtype)
            params[name_b] = B.astype(np_dtype)
    write_onnx_adapter(path, params)
