"""PEFT LoRA directories as an adaptkit format: lossless both ways, or a clear refusal."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import (
    Adapter,
    AdaptkitError,
    BaseModelInfo,
    FormatError,
    InvalidAdapterError,
    OutputError,
    Producer,
    TrainableTokens,
)
from adaptkit.api.files import ADAPTER_FOLDER
from adaptkit_peft.config import CONFIG_NAME, load_config, module_rank_alpha, saved_module_names
from adaptkit_peft.experts import expert_targets
from adaptkit_peft.tensors import PREFIX, bias_mode, build_pair, peft_tensors, sort_tensors, token_indices

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PROVENANCE_NAME = "adaptkit.json"


class PeftFormat:
    name = "peft"
    description = "PEFT LoRA directory: adapter_config.json + adapter_model.safetensors"
    requires: ClassVar[dict[str, str]] = {"safetensors": "safetensors", "torch": "torch"}
    output_kind = ADAPTER_FOLDER

    def detect(self, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and any((p / n).is_file() for n in (CONFIG_NAME, WEIGHTS_NAME, *PICKLE_NAMES))

    def read(self, path: Path) -> Adapter:
        """Load a PEFT LoRA directory; refuses pickles and features that are not plain LoRA."""
        from adaptkit.api import LoraPair
        from adaptkit.api.files import read_tensors

        folder = Path(path)
        weights = folder / WEIGHTS_NAME
        if not weights.exists():
            pickles = [n for n in PICKLE_NAMES if (folder / n).exists()]
            if pickles:
                raise FormatError(
                    f"only {pickles[0]} found: a pickle, which can run code when loaded, so "
                    "adaptkit never opens it",
                    path=folder / pickles[0],
                    hint="convert it to adapter_model.safetensors with a tool you trust, e.g. "
                    "PEFT in a sandbox: save_pretrained(..., safe_serialization=True)",
                )
            raise FormatError(f"missing {WEIGHTS_NAME}", path=folder)
        cfg = load_config(folder / CONFIG_NAME)
        _, tensors = read_tensors(weights)

        found = sort_tensors(tensors, saved_module_names(cfg), cfg.get("bias") or "none")
        if found.problems:
            raise InvalidAdapterError.from_problems(found.problems, path=weights)
        problems: list[str] = []
        rslora = bool(cfg.get("use_rslora", False))
        targets: dict[str, LoraPair] = {}
        params = expert_targets(sorted(found.factors), cfg, folder / CONFIG_NAME)
        for module, tensors_of in sorted(found.factors.items()):
            target = params.get(module, module)  # an experts parameter's path, or the module's
            r, alpha = module_rank_alpha(cfg, target, folder / CONFIG_NAME)
            try:
                targets[target] = build_pair(module, tensors_of, r, alpha, rslora, experts=module in params)
            except InvalidAdapterError as exc:
                problems.append(exc.message)
        saved = found.saved
        tokens = {}
        for module, values in sorted(found.tokens.items()):
            indices = token_indices(cfg, module)
            if indices is None:
                problems.append(
                    f"{PREFIX}{module}.token_adapter.trainable_tokens_delta: trainable token rows, but "
                    f"{CONFIG_NAME}'s trainable_token_indices names no token ids for {module!r}"
                )
                continue
            tokens[module] = TrainableTokens(indices=indices, values=values)
        problems += [
            f"{PREFIX}{module}.base_layer.*: a saved base weight of {module!r} without LoRA factors"
            for module, entry in saved.items()
            if entry.origin == "base_layer" and module not in found.factors
        ]
        if problems:
            raise InvalidAdapterError.from_problems(problems, path=weights)
        if not targets:
            raise InvalidAdapterError("no LoRA factors found", path=weights)
        adapter = Adapter(
            targets=targets,
            base_model=BaseModelInfo(
                name=cfg.get("base_model_name_or_path"),
                revision=cfg.get("revision"),
                fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)) or None,
            ),
            producer=Producer(component="format:peft"),
            provenance={"converted_from": {"format": "peft", "peft_version": cfg.get("peft_version")}},
            saved=saved,
            tokens=tokens,
        )
        problems = adapter.problems()  # what no tensor shows alone: token rows against their ids
        if problems:
            raise InvalidAdapterError.from_problems(problems, path=weights)
        return adapter

    def write(self, adapter: Adapter, path: Path, *, overwrite: bool = False) -> Path:
        """Write a PEFT directory that PEFT loads with every target's scale reproduced.

        ``use_rslora`` follows the majority of targets; each target's alpha is chosen so
        PEFT's scale equals adaptkit's (``alpha = s·r``, or ``s·sqrt(r)`` with rsLoRA — the
        original alpha whenever the scaling mode already matches); ``r`` and ``lora_alpha``
        are the most common values and ``rank_pattern`` / ``alpha_pattern`` list the rest
        under regex-escaped full module paths (which match exactly one module).
        """
        from safetensors.torch import save as st_save

        from adaptkit.api.files import atomic_directory

        out = Path(path)
        if out.exists() and not out.is_dir():
            raise OutputError("a PEFT adapter is a directory, but a file exists here", path=out)
        if out.exists() and not overwrite:
            raise OutputError("output exists", path=out, hint="pass --force to replace it")
        adapter.validate()
        dora = sorted(t for t, p in adapter.targets.items() if p.magnitude is not None)
        if dora and len(dora) != len(adapter.targets):
            plain = sorted(set(adapter.targets) - set(dora))[0]
            raise AdaptkitError(
                f"{dora[0]} is a DoRA target but {plain} is not; PEFT's use_dora applies to every "
                "target, and a plain target's magnitude would need the base weight",
                hint="write it in the native format (--to adaptkit), or export it merged",
            )
        cfg = peft_config(adapter)
        from adaptkit.api.files import unshared

        blob = st_save(unshared(peft_tensors(adapter)), metadata={"format": "pt"})
        provenance = {
            "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
            "provenance": adapter.provenance,
        }
        with atomic_directory(out, overwrite=overwrite) as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(blob)
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, allow_nan=False) + "\n")
            (tmp / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        return out


def _peft_alpha(pair: Any, rslora: bool) -> float:
    """The lora_alpha that makes PEFT's scale equal ``pair.scale``."""
    if pair.scaling == ("alpha/sqrt(r)" if rslora else "alpha/r"):
        return float(pair.alpha)
    return pair.scale * (math.sqrt(pair.rank) if rslora else pair.rank)


def peft_config(adapter: Adapter) -> dict[str, Any]:
    """The ``adapter_config.json`` dict for ``adapter`` (see :meth:`PeftFormat.write`)."""
    modes = Counter(p.scaling for p in adapter.targets.values())
    rslora = modes["alpha/sqrt(r)"] > modes["alpha/r"] + modes["explicit"]
    ranks = {name: p.rank for name, p in adapter.targets.items()}
    alphas = {name: _peft_alpha(p, rslora) for name, p in adapter.targets.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": adapter.base_model.name,
        "revision": adapter.base_model.revision,
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": rslora,
        "target_modules": sorted(t for t, p in adapter.targets.items() if p.kind != "experts") or None,
        "target_parameters": sorted(t for t, p in adapter.targets.items() if p.kind == "experts") or None,
        "rank_pattern": {re.escape(n): v for n, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in sorted(alphas.items()) if v != alpha},
        "fan_in_fan_out": bool(adapter.base_model.fan_in_fan_out),
        "lora_dropout": 0.0,
        "bias": bias_mode(adapter),
        "lora_bias": any(p.bias is not None for p in adapter.targets.values()),
        "modules_to_save": sorted(m for m, e in adapter.saved.items() if e.origin == "modules_to_save")
        or None,
        "use_dora": any(p.magnitude is not None for p in adapter.targets.values()),
        "trainable_token_indices": {m: list(e.indices) for m, e in sorted(adapter.tokens.items())} or None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
