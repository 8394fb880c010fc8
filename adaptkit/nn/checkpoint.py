"""Bake adapters into a checkpoint's safetensors files, holding one tensor at a time.

What ``export --merged`` writes and what the ONNX exporter hands its graph builder. Baking
keeps every tensor's shape; by default it keeps each dtype too, so the output header is
byte-for-byte the input header: it is copied verbatim, then the data region is streamed tensor
by tensor in offset order, each target weight read, updated (``W + ΔW`` computed in float32,
cast back) and written. With ``cast`` every floating tensor is written in that dtype instead
(a float32 graph built from a bf16 checkpoint must not see ``W + ΔW`` rounded to bf16 first),
and the header is rewritten with the new offsets. Peak memory is the largest tensor (plus its
float32 working copy), not the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from adaptkit.errors import AdaptkitError
from adaptkit.io.safetensors_strict import checked_header, read_header

_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

Update = Callable[[torch.Tensor], torch.Tensor]


def tensor_index(path: Path) -> dict[str, dict[str, Any]]:
    """``name -> {dtype, shape, data_offsets}`` of a safetensors file, checked strictly."""
    return checked_header(path)[1]


_FLOATING = {"F64", "F32", "F16", "BF16"}
_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}


def stream_update(
    src: Path,
    dst: Path,
    updates: dict[str, Update],
    cast: torch.dtype | None = None,
    additions: dict[str, tuple[str, Update]] | None = None,
) -> int:
    """Copy ``src`` to ``dst`` applying ``updates[name](tensor)``; returns the largest tensor's
    byte size (the working-set bound).

    Args:
        src: A safetensors file (its header already checked by :func:`tensor_index`).
        dst: Where to write.
        updates: ``name -> f(W)``; ``f`` must keep ``W``'s dtype and shape (``W`` arrives
            already cast).
        cast: Write every floating tensor in this dtype (after its update); ``None`` keeps them.
        additions: ``new name -> (source name, f)``: tensors to write after the others, each
            ``f(source)`` of a tensor of this file as stored (cast, before its own update), with
            the source's dtype and shape. Each is held in memory until the end of the file.
    """
    additions = additions or {}
    header, n, _ = read_header(src)
    entries = sorted(
        ((v["data_offsets"][0], v["data_offsets"][1], k, v) for k, v in header.items() if k != "__metadata__")
    )
    added = [(name, header[source]) for name, (source, _) in sorted(additions.items())]
    rewrite = cast is not None or bool(added)
    out_header = _layout_header(header, entries, cast, added) if rewrite else None
    largest = 0
    held: dict[str, bytes] = {}
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if out_header is None:
            fout.write(fin.read(8 + n))  # length prefix + header, unchanged
        else:
            fout.write(len(out_header).to_bytes(8, "little") + out_header)
        base = 8 + n
        for start, end, name, info in entries:
            fin.seek(base + start)
            raw = fin.read(end - start)
            largest = max(largest, end - start)
            recast = cast is not None and info["dtype"] in _FLOATING and _TORCH_DTYPES[info["dtype"]] != cast
            sources = [new for new, (source, _) in additions.items() if source == name]
            if name in updates or recast or sources:
                dtype = _TORCH_DTYPES[info["dtype"]]
                tensor = torch.frombuffer(bytearray(raw), dtype=dtype).reshape(info["shape"])
                if recast:  # before the update: W + ΔW is then rounded once, to the cast dtype
                    tensor = tensor.to(cast)
                for new in sources:  # from the stored tensor, not from its own update
                    held[new] = _checked_bytes(additions[new][1](tensor), tensor, new)
                if name in updates:
                    tensor = _checked(updates[name](tensor), tensor, name)
                raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
            fout.write(raw)
        for name, _ in added:
            fout.write(held.pop(name))
        fout.flush()
        os.fsync(fout.fileno())
    return largest


def _checked(new: torch.Tensor, old: torch.Tensor, name: str) -> torch.Tensor:
    if new.dtype != old.dtype or new.shape != old.shape:
        raise AdaptkitError(f"update changed dtype/shape of {name}")  # a bug, not input
    return new


def _checked_bytes(new: torch.Tensor, old: torch.Tensor, name: str) -> bytes:
    return _checked(new, old, name).contiguous().view(torch.uint8).numpy().tobytes()


def _layout_header(
    header: dict[str, Any], entries: list[Any], cast: torch.dtype | None, added: list[tuple[str, Any]]
) -> bytes:
    """The header of the file :func:`stream_update` writes: floating dtypes replaced by ``cast``
    (if given), offsets laid out again in the same order, the ``added`` tensors (name, source's
    header entry) after the rest, padded to 8 bytes as safetensors does."""
    import json

    new: dict[str, Any] = {}
    if "__metadata__" in header:
        new["__metadata__"] = header["__metadata__"]
    cursor = 0
    for name, info in [(e[2], e[3]) for e in entries] + added:
        floating = cast is not None and info["dtype"] in _FLOATING
        dtype = _DTYPE_NAMES[cast] if floating else info["dtype"]
        count = 1
        for d in info["shape"]:
            count *= d
        size = count * torch.empty((), dtype=_TORCH_DTYPES[dtype]).element_size()
        new[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [cursor, cursor + size]}
        cursor += size
    raw = json.dumps(new, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def bake_checkpoint(
    folder: Path,
    adapter: Any,
    out: Path,
    *,
    merge_base: str | None = None,
    blocksize: int = 64,
    cast: torch.dtype | None = None,
) -> dict[str, Any]:
    """Write ``folder``'s model with ``W + ΔW`` baked in to the (existing, empty) folder ``out``.

    Every target is placed in the checkpoint as the model class itself maps modules to tensors
    (:mod:`adaptkit.nn.placement`) and must fit. Saved modules (PEFT's ``modules_to_save``)
    replace base tensors; a LoRA update on the same weight is added to the replacement, as
    PEFT's merge does. Side files (config, tokenizer, generation config) are copied.

    Args:
        folder: A vetted model folder (:func:`adaptkit.io.models.resolve_model`).
        adapter: The one (already combined) adapter to bake.
        out: Destination folder.
        merge_base: ``"original"`` adds ``ΔW`` to the stored weights; ``"dequantized"`` to their
            NF4 round trip (what a QLoRA adapter was trained against). Either, or a QLoRA
            adapter, also reports the quantization gap ``‖W − dequant(NF4(W))‖ / ‖ΔW‖``.
        blocksize: NF4 block size for the round trip.
        cast: Write floating tensors in this dtype (``config.json``'s dtype follows).

    Returns:
        The report: targets baked, files written, largest tensor, update ratios ``‖ΔW‖/‖W‖``.
    """
    import json
    import shutil

    from adaptkit.io.models import safetensors_files, side_files
    from adaptkit.nn.baking import add_delta, finite_as, target_delta, work_dtype
    from adaptkit.nn.dora import dora_weight
    from adaptkit.nn.experts import checkpoint_layout, expert_delta
    from adaptkit.nn.placement import (
        bias_layout,
        build_skeleton,
        check_weights_match,
        meta_model,
        parameter_layout,
    )
    from adaptkit.nn.tensor_edits import TensorEdit
    from adaptkit.nn.tied import index_new_tensors, tied_missing, tied_stored, untie_config

    files = safetensors_files(folder)
    headers = {f: tensor_index(f) for f in files}  # each header read (and checked) once
    index = {name: f for f, header in headers.items() for name in header}
    tensors = {
        name: (info.get("dtype"), tuple(info.get("shape") or ()))
        for header in headers.values()
        for name, info in header.items()
    }
    model = meta_model(folder)
    check_weights_match(folder, tensors, model)  # never bake into a model of another shape
    skeleton = build_skeleton(folder, model)
    tied = tied_missing(model, tensors, skeleton)  # e.g. lm_head.weight, stored as the embeddings
    plan = _plan(adapter, tensors, folder, skeleton, tied)
    experts = {t: p for t, p in adapter.targets.items() if p.kind == "experts"}
    canonical = skeleton.canonical if skeleton is not None else (lambda name: name)
    expert_slices = checkpoint_layout(experts, tensors, model, canonical)
    saved_params = {f"{m}.{k}": t for m, e in adapter.saved.items() for k, t in e.params.items()}
    replace = parameter_layout({k: tuple(t.shape) for k, t in saved_params.items()}, tensors, skeleton, tied)
    replacement = {name: saved_params[param] for param, name in replace.items()}
    biases = bias_layout([t for t, p in adapter.targets.items() if p.bias is not None], tensors, skeleton)
    rows_at = _token_tables(adapter, tensors, skeleton, tied)

    if merge_base not in (None, "original", "dequantized"):
        raise AdaptkitError(f"merge_base must be 'original' or 'dequantized', got {merge_base!r}")
    diagnose = merge_base is not None or adapter.producer.component == "backend:qlora"
    gaps: dict[str, float] = {}
    ratios: dict[str, float] = {}
    edits: dict[str, TensorEdit] = {}  # tensor name -> what the adapter does to it
    for name, tensor in replacement.items():
        edits.setdefault(name, TensorEdit()).replace = tensor
    for module, name in rows_at.items():
        edits.setdefault(name, TensorEdit()).rows.append(adapter.tokens[module])
    for target, place in plan.items():
        pair, conv1d = adapter.targets[target], place.conv1d

        def update(W: Any, pair: Any = pair, conv1d: bool = conv1d, target: str = target) -> Any:
            delta = target_delta(pair, W, conv1d=conv1d)
            Wf = W.to(delta.dtype)
            if diagnose:
                Wq = nf4_round_trip(Wf.T if conv1d else Wf, blocksize)
                Wq = Wq.T if conv1d else Wq
                gaps[target] = float((Wf - Wq).norm() / max(float(delta.norm()), 1e-30))
                if merge_base == "dequantized":
                    Wf = Wq
            if pair.magnitude is not None:  # DoRA: W' re-normalised, so W' − W is the update
                new = dora_weight(Wf, delta, pair.magnitude, kind=pair.kind, conv1d=conv1d)
                ratios[target] = float((new - Wf).norm() / max(float(Wf.norm()), 1e-30))
                return finite_as(new, W.dtype, key=target)
            ratios[target] = float(delta.norm() / max(float(Wf.norm()), 1e-30))
            return add_delta(Wf, delta, key=target, dtype=W.dtype)

        edits.setdefault(place.tensor, TensorEdit()).update = update
    for target, slices in expert_slices.items():
        for piece in slices:

            def expert_update(
                W: Any, pair: Any = experts[target], piece: Any = piece, target: str = target
            ) -> Any:
                if piece.expert is None:  # the whole (E, ·, ·) parameter
                    delta = target_delta(pair, W, conv1d=piece.transposed)
                else:  # one expert's tensor: its rows of ΔW[e]
                    delta = expert_delta(pair, piece.expert, work_dtype(W.dtype))[slice(*piece.rows)]
                ratio = float(delta.norm() / max(float(W.float().norm()), 1e-30))
                ratios[target] = max(ratios.get(target, 0.0), ratio)
                return add_delta(W, delta, key=target)

            edits.setdefault(piece.tensor, TensorEdit()).update = expert_update
    for target, name in biases.items():

        def bias_update(b: Any, pair: Any = adapter.targets[target], target: str = target) -> Any:
            return add_delta(b, pair.delta_bias(work_dtype(b.dtype)), key=f"{target}.bias")

        edits.setdefault(name, TensorEdit()).update = bias_update
    # A weight tied to one the adapter changes, or changed while its source is not, no longer
    # equals its source: it is written as a tensor of its own, from the source as stored. Token
    # rows are the one change PEFT makes to both sides of a tie (see adaptkit.nn.tied).
    own = {
        head: src
        for head, src in tied.items()
        if head in edits or (src in edits and not edits[src].keeps_ties)
    }
    untied = list(own)
    # Some checkpoints store both sides of a tie; the model class ties them again on loading
    # unless the config stops it.
    untied += sorted(
        head
        for head, src in tied_stored(model, tensors, skeleton).items()
        if head in edits or (src in edits and not edits[src].keeps_ties)
    )
    updates: dict[Path, dict[str, Update]] = {}
    additions: dict[Path, dict[str, tuple[str, Update]]] = {}
    for head, src in own.items():
        head_edit = edits.pop(head, TensorEdit())
        if not head_edit.rows and src in edits:  # the head's rows follow the embeddings' (PEFT)
            head_edit.rows = list(edits[src].rows)
        additions.setdefault(index[src], {})[head] = (src, head_edit)
    for name, edit in edits.items():
        updates.setdefault(index[name], {})[name] = edit

    largest = 0
    for f in files:
        written = stream_update(f, out / f.name, updates.get(f, {}), cast=cast, additions=additions.get(f))
        largest = max(largest, written)
    copied = []
    for item in side_files(folder):
        shutil.copy2(item, out / item.name)
        copied.append(item.name)
    if cast is not None and (out / "config.json").is_file():
        from adaptkit.io.jsonio import read_json_file
        from adaptkit.io.model_config import MAX_CONFIG_BYTES

        config = read_json_file(out / "config.json", what="config.json", max_bytes=MAX_CONFIG_BYTES)
        name = str(cast).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = name
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if untied:
        untie_config(out)
        index_new_tensors(out, {head: index[src].name for head, src in own.items()})
    report: dict[str, Any] = {
        "targets_baked": len(plan) + len(expert_slices),
        "saved_tensors_written": sorted(replacement),
        "weight_files": [f.name for f in files],
        "copied": copied,
        "largest_tensor_bytes": largest,
        "merge_base": merge_base or "original",
    }
    if untied:
        report["untied"] = {
            "about": "weights the base ties to another, written as tensors of their own "
            "(tie_word_embeddings: false): the adapter changes one side only",
            "tensors": sorted(untied),
        }
    if gaps:
        report["quantization_gap"] = {
            "about": "||W16 - dequant(NF4(W16))||_F / ||dW||_F per target",
            "max": max(gaps.values()),
            "per_target": gaps,
        }
    if ratios:
        report["update_ratio"] = {
            "max": max(ratios.values()),
            "mean": sum(ratios.values()) / len(ratios),
            "per_target": ratios,
        }
    return report


def nf4_round_trip(W: Any, blocksize: int) -> Any:
    """``dequant(quant(W))`` with the QLoRA settings (NF4, double quantization)."""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(
        W.to(torch.float32).contiguous(), blocksize=blocksize, compress_statistics=True, quant_type="nf4"
    )
    return dequantize_4bit(packed, state).to(W.dtype)


def _token_tables(adapter: Any, tensors: dict[str, Any], skeleton: Any, tied: Any) -> dict[str, str]:
    """``module -> checkpoint tensor`` of each table whose rows the adapter's trainable tokens
    replace (a head tied to the embeddings: its own name, written untied), checked to hold them."""
    from adaptkit.errors import InvalidAdapterError
    from adaptkit.nn.tensor_edits import token_rows_problems

    stored: dict[str, str] = {}
    for name in sorted(tensors):
        stored.setdefault(skeleton.canonical(name) if skeleton is not None else name, name)
    placed, problems = {}, []
    for module, rows in sorted(adapter.tokens.items()):
        param = f"{module}.weight"
        name = stored.get(skeleton.canonical(param) if skeleton is not None else param)
        shape = tuple(tensors[name][1]) if name is not None else None
        if name is None and param in tied:
            name, shape = param, tuple(tensors[tied[param]][1])
        if name is None or shape is None:
            problems.append(
                f"{module}.trainable_tokens: the base checkpoint has no {param} to replace rows of"
            )
            continue
        problems += token_rows_problems(module, rows, shape)
        placed[module] = name
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return placed


def _plan(
    adapter: Any, tensors: dict[str, tuple[str, tuple[int, ...]]], folder: Path, skeleton: Any, tied: Any
) -> dict[str, Any]:
    """``target -> TargetPlacement``, placed as the model class itself maps its modules to
    checkpoint tensors (see :mod:`adaptkit.nn.placement`); every target must fit."""
    from adaptkit.nn.placement import target_layout

    sizes = {t: (p.out_features, p.in_features) for t, p in adapter.targets.items() if p.kind != "experts"}
    embeddings = {t for t, p in adapter.targets.items() if p.kind == "embedding"}
    return target_layout(sizes, tensors, folder, skeleton=skeleton, tied=tied, embeddings=embeddings)
