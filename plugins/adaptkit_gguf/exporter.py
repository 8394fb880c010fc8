"""The ``gguf`` exporter: LoRA adapters as llama.cpp adapter files.

``adaptkit export --gguf --model BASE -a SPEC [-a SPEC ...] -o OUT`` writes ``OUT/adapter.gguf``:
the exact weighted sum of the adapters (as every merged export), each target's own scale folded
into its factors (:mod:`adaptkit_gguf.tensors`). With ``--lora-inputs`` it writes one file per
adapter instead, each at weight 1, and ``adapters.json`` naming them with their weights: load
them all (``llama-server --lora-scaled a.gguf 0.7 --lora-scaled b.gguf 0.3``) and the weights are
llama.cpp's per-adapter scales, switchable per request.

What llama.cpp cannot apply is refused with the target and the reason, never dropped: a saved
module (``modules_to_save`` replaces a whole tensor; an adapter GGUF holds LoRA pairs only), a
LoRA on an output head tied to the embeddings (llama.cpp keeps one tensor for both), a module
with no GGUF tensor, an expert of a mixture (stored as one 3-D tensor per layer), trainable token
rows, and every target that is more than a plain linear pair (DoRA, a LoRA bias, an embedding
LoRA, LoRA on experts' parameters).

Only :mod:`adaptkit.api` is imported, as for any third-party plugin.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, ExportRequest, WeightedAdapter

#: The merged export's file, and the manifest of a ``--lora-inputs`` export.
FILE = "adapter.gguf"
MANIFEST = "adapters.json"
_FILE_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class GgufExporter:
    """Writes llama.cpp LoRA adapters (see the module docstring)."""

    name = "gguf"
    description = "llama.cpp / Ollama LoRA adapter (adapter.gguf), per-target scales exact"
    help = """
        OUT/adapter.gguf for llama.cpp, llama-server, Ollama (ADAPTER) and
        llama-cpp-python: the exact weighted sum of the adapters, every target's own scale
        folded in. --lora-inputs: one GGUF per adapter plus adapters.json (hot swap).
          adaptkit export --gguf --model ./base -a a.yaml -a b.yaml -o out
        """
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "gguf": "gguf"}
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "lora_inputs": {
                "type": "boolean",
                "default": False,
                "description": "one adapter GGUF per -a, weights as llama.cpp's per-adapter scales "
                "(adapters.json), instead of their combination in one file",
            },
            "adapter_dtype": {
                "type": "string",
                "enum": ["float32", "float16", "bfloat16"],
                "default": "float32",
                "description": "dtype of the LoRA factors in the file (scales are folded in float64 first)",
            },
        },
    }

    def export(self, request: ExportRequest, log: Any) -> dict[str, Any]:
        from adaptkit.api.export import combined
        from adaptkit.api.models import load_config

        if not request.adapters:
            raise AdaptkitError("export --gguf needs at least one --adapter")
        from adaptkit.api.models import meta_model

        config = load_config(request.model_dir)
        arch = _architecture(config)
        model = meta_model(request.model_dir)
        if model is None:
            raise AdaptkitError("transformers does not know this model type; its targets cannot be checked")
        for a in request.adapters:
            _check_appliable(a, config, model)
        names = _name_map(arch.gguf_arch, config)
        dtype = request.options["adapter_dtype"]
        if not request.options["lora_inputs"]:
            adapter = combined(request.adapters)
            entry = _write(
                request.out_dir / FILE,
                adapter,
                arch,
                config,
                names,
                dtype,
                "+".join(a.name for a in request.adapters),
            )
            log(
                f"wrote {request.output / FILE}: {entry['targets']} LoRA pairs for {arch.gguf_arch.lower()}, "
                f"alpha {entry['alpha']:g}, {dtype}"
            )
            return {"file": FILE, "architecture": arch.gguf_arch.lower(), "adapter_dtype": dtype, **entry}

        files = _file_names(request.adapters)
        entries = []
        for a in request.adapters:
            entry = _write(request.out_dir / files[a.name], a.adapter, arch, config, names, dtype, a.name)
            entries.append({"name": a.name, "file": files[a.name], "scale": a.weight, **entry})
            log(f"wrote {request.output / files[a.name]}: {entry['targets']} LoRA pairs, scale {a.weight:g}")
        manifest = {
            "format": "adaptkit-gguf-adapters",
            "version": 1,
            "architecture": arch.gguf_arch.lower(),
            "adapters": _manifest_entries(entries),
            "llama_server": " ".join(f"--lora-scaled {e['file']} {e['scale']:g}" for e in entries),
        }
        # out_dir is the host's private folder, published whole and atomically when done.
        (request.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return {
            "files": [e["file"] for e in entries],
            "manifest": MANIFEST,
            "architecture": arch.gguf_arch.lower(),
            "adapter_dtype": dtype,
            "adapter_files": entries,
        }


def _manifest_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: {k: e[k] for k in ("file", "scale", "alpha", "targets")} for e in entries}


def _architecture(config: Any):
    from adaptkit_gguf.architectures import ARCHITECTURES

    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise AdaptkitError(
            f"model type {model_type!r}: no llama.cpp adapter layout verified for it "
            f"(verified: {', '.join(sorted(ARCHITECTURES))})",
            key="model_type",
            hint="export with --merged and convert the merged model with llama.cpp",
        )
    return arch


def _check_appliable(a: WeightedAdapter, config: Any, model: Any) -> None:
    """Refuse, with the module and the reason, what an adapter GGUF cannot carry (``model``: the
    base on the meta device)."""
    from adaptkit.api.nn import output_head_names, resolve_targets

    if a.adapter.saved:
        module = sorted(a.adapter.saved)[0]
        raise AdaptkitError(
            f"adapter {a.name!r} saves {module} in full (modules_to_save); a llama.cpp adapter "
            "holds LoRA pairs only and cannot replace a tensor",
            key=module,
            hint="export with --merged and convert the merged model with llama.cpp",
        )
    if a.adapter.tokens:
        module = sorted(a.adapter.tokens)[0]
        raise AdaptkitError(
            f"adapter {a.name!r} trains token rows of {module} in full (trainable tokens); a llama.cpp "
            "adapter holds LoRA pairs only and cannot replace rows",
            key=module,
            hint="export with --merged and convert the merged model with llama.cpp",
        )
    variants = [(t, p.variant) for t, p in sorted(a.adapter.targets.items()) if p.variant]
    if variants:
        target, variant = variants[0]
        raise AdaptkitError(
            f"adapter {a.name!r} adapts {target} with a {variant}; a llama.cpp adapter applies plain "
            "LoRA pairs only (y += scale·B·(A·x)), which would drop or misplace what the variant adds",
            key=target,
            hint="export with --merged and convert the merged model with llama.cpp",
        )
    resolve_targets(model, a.adapter)  # each target exists in the base with the adapter's shape
    tied = getattr(config, "tie_word_embeddings", False)
    heads = output_head_names(model)
    for target in sorted(a.adapter.targets):
        if tied and target in heads:
            raise AdaptkitError(
                f"adapter {a.name!r} has a LoRA on {target}, the output head this base ties to the "
                "token embeddings; llama.cpp keeps one tensor for both and applies no LoRA to it",
                key=target,
                hint="export with --merged (the head is untied there) or train without the head",
            )


def _name_map(gguf_arch: str, config: Any) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[gguf_arch], config.num_hidden_layers)


def _write(path, adapter, arch, config, names, dtype, label) -> dict[str, Any]:
    from adaptkit_gguf.tensors import build, file_alpha
    from adaptkit_gguf.writer import write_adapter

    alpha = file_alpha(adapter)
    tensors = build(adapter, arch, config, names, alpha)
    folded = sorted(t.target for t in tensors if t.fold != 1.0)
    size = write_adapter(
        path,
        tensors,
        gguf_arch=arch.gguf_arch,
        alpha=alpha,
        dtype=dtype,
        name=label,
        extra={"scales_folded": len(folded)},
    )
    return {"alpha": alpha, "targets": len(tensors), "scales_folded": len(folded), "bytes": size}


def _file_names(adapters: list[WeightedAdapter]) -> dict[str, str]:
    """``adapter name -> file name``, refusing names that collide once made file-safe."""
    files: dict[str, str] = {}
    seen: dict[str, str] = {}
    for a in adapters:
        file = _FILE_SAFE.sub("_", a.name) + ".gguf"
        if file.lower() in seen or file.lower() == FILE:
            other = seen.get(file.lower(), "the merged file")
            raise AdaptkitError(
                f"adapters {other!r} and {a.name!r} would both be written to {file!r}",
                hint="give them names that differ in letters or digits (name: in a manifest YAML)",
            )
        seen[file.lower()] = a.name
        files[a.name] = file
    return files
