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
    SavedModule,
    is_module_path,
)
from adaptkit.api.files import ADAPTER_FOLDER
from adaptkit_peft.config import CONFIG_NAME, load_config, module_rank_alpha, saved_module_names

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
PREFIX = "base_model.model."
PROVENANCE_NAME = "adaptkit.json"

_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\."
    r"(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.weight)?$"
)


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

        factors: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        saved: dict[str, SavedModule] = {}
        listed = saved_module_names(cfg)
        for key, tensor in sorted(tensors.items()):
            m = _KEY.match(key)
            if m is None:
                problem = _saved_tensor(key, tensor, listed, saved)
                if problem:
                    problems.append(problem)
                continue
            kind = m["kind"]
            if not is_module_path(m["module"]):
                problems.append(f"{key!r}: {m['module']!r} is not a dotted module path")
                continue
            if kind == "lora_magnitude_vector":
                raise AdaptkitError(
                    "DoRA magnitude vectors are not supported: a DoRA update is not s·B@A",
                    path=weights,
                    key=key,
                    hint="merge it with PEFT (merge_and_unload) and export the merged model instead",
                )
            factors.setdefault(m["module"], {})[_FACTOR_NAMES[kind]] = tensor
        if problems:
            raise InvalidAdapterError.from_problems(problems, path=weights)

        rslora = bool(cfg.get("use_rslora", False))
        targets: dict[str, LoraPair] = {}
        for module in sorted(factors):
            pair = factors[module]
            embedding = "eA" in pair or "eB" in pair
            names = ("eA", "eB") if embedding else ("A", "B")
            missing = [_KEY_OF[f] for f in names if f not in pair]
            if embedding and ("A" in pair or "B" in pair):
                problems.append(f"{PREFIX}{module}: holds both lora_A/B and lora_embedding_A/B factors")
                continue
            if missing:
                problems.append(f"{PREFIX}{module}.{missing[0]}: missing (its pair is present)")
                continue
            r, alpha = module_rank_alpha(cfg, module, folder / CONFIG_NAME)
            A, B = pair[names[0]], pair[names[1]]
            if A.ndim != 2 or A.shape[0] != r:
                problems.append(
                    f"{PREFIX}{module}.{_KEY_OF[names[0]]}: shape {tuple(A.shape)} disagrees with rank "
                    f"{r} from {CONFIG_NAME}"
                )
                continue
            if embedding and B.ndim == 2:
                # PEFT's ΔE = s·(B_peft @ A_peft)ᵀ: in the table's layout A = B_peftᵀ, B = A_peftᵀ.
                A, B = B.T.contiguous(), A.T.contiguous()
            try:
                lp = LoraPair(
                    A=A,
                    B=B,
                    alpha=alpha,
                    scaling="alpha/sqrt(r)" if rslora else "alpha/r",
                    kind="embedding" if embedding else "linear",
                )
            except InvalidAdapterError as exc:
                problems.append(f"{PREFIX}{module}: {exc.message}")
                continue
            problems += [
                f"{PREFIX}{module}.{f}.weight: contains NaN or Inf values" for f in lp.check_finite()
            ]
            targets[module] = lp
        problems += [
            f"{PREFIX}{module}.base_layer.*: a saved base weight of {module!r} without LoRA factors"
            for module, entry in saved.items()
            if entry.origin == "base_layer" and module not in factors
        ]
        if problems:
            raise InvalidAdapterError.from_problems(problems, path=weights)
        if not targets:
            raise InvalidAdapterError("no LoRA factors found", path=weights)
        return Adapter(
            targets=targets,
            base_model=BaseModelInfo(
                name=cfg.get("base_model_name_or_path"),
                revision=cfg.get("revision"),
                fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)) or None,
            ),
            producer=Producer(component="format:peft"),
            provenance={"converted_from": {"format": "peft", "peft_version": cfg.get("peft_version")}},
            saved=saved,
        )

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
        cfg = peft_config(adapter)
        tensors = {}
        for name, pair in sorted(adapter.targets.items()):
            tensors.update(_peft_factors(name, pair))
        for module, entry in sorted(adapter.saved.items()):
            infix = ".base_layer" if entry.origin == "base_layer" else ""
            for param, tensor in sorted(entry.params.items()):
                tensors[f"{PREFIX}{module}{infix}.{param}"] = tensor.detach().contiguous().cpu()
        from adaptkit.api.files import unshared

        blob = st_save(unshared(tensors), metadata={"format": "pt"})
        provenance = {
            "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
            "provenance": adapter.provenance,
        }
        with atomic_directory(out, overwrite=overwrite) as tmp:
            (tmp / WEIGHTS_NAME).write_bytes(blob)
            (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, allow_nan=False) + "\n")
            (tmp / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        return out


#: The factor each PEFT key holds ("eA"/"eB": an embedding LoRA's, in PEFT's transposed layout).
_FACTOR_NAMES = {"lora_A": "A", "lora_B": "B", "lora_embedding_A": "eA", "lora_embedding_B": "eB"}
_KEY_OF = {"A": "lora_A.weight", "B": "lora_B.weight", "eA": "lora_embedding_A", "eB": "lora_embedding_B"}


def _peft_factors(name: str, pair: Any) -> dict[str, Any]:
    """PEFT's tensors for one target: ``lora_A/B.weight``, or for an embedding
    ``lora_embedding_A = Bᵀ`` and ``lora_embedding_B = Aᵀ`` (PEFT's layout)."""
    A, B = pair.A.detach().cpu(), pair.B.detach().cpu()
    if pair.kind == "embedding":
        return {
            f"{PREFIX}{name}.lora_embedding_A": B.T.contiguous(),
            f"{PREFIX}{name}.lora_embedding_B": A.T.contiguous(),
        }
    return {f"{PREFIX}{name}.lora_A.weight": A.contiguous(), f"{PREFIX}{name}.lora_B.weight": B.contiguous()}


#: Last module-path components and what PEFT users save them as, for refusal messages.
_SAVED_KINDS = {
    "classifier": "a saved classification head",
    "score": "a saved classification head",
    "qa_outputs": "a saved question-answering head",
    "lm_head": "a saved output head (lm_head)",
    "embed_tokens": "saved input embeddings",
    "wte": "saved input embeddings",
    "embed_out": "a saved output head",
}


def _saved_tensor(key: str, tensor: Any, listed: list[str], saved: dict[str, SavedModule]) -> str | None:
    """File a non-LoRA tensor as a saved module's parameter; a problem message if it is none."""
    if not key.startswith(PREFIX):
        return f"{key}: matches no LoRA key pattern (PEFT keys start with {PREFIX!r})"
    module, _, param = key[len(PREFIX) :].rpartition(".")
    if not is_module_path(module) or not param.isidentifier():
        return f"{key!r}: {module!r} is not a dotted module path"
    if module.endswith(".base_layer"):
        target = module[: -len(".base_layer")]
        saved.setdefault(target, SavedModule(params={}, origin="base_layer")).params[param] = tensor
        return None
    if any(module.endswith(name) for name in listed):  # PEFT's own rule: a plain suffix
        saved.setdefault(module, SavedModule(params={})).params[param] = tensor
        return None
    kind = _SAVED_KINDS.get(module.rpartition(".")[2], "a whole saved module")
    return (
        f"{key}: a full tensor of {module!r} ({kind}), but {CONFIG_NAME} does not list it in "
        "modules_to_save (nor does its task_type add it); add the module's name there if it was "
        "trained whole"
    )


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
        "target_modules": sorted(adapter.targets),
        "rank_pattern": {re.escape(n): v for n, v in sorted(ranks.items()) if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in sorted(alphas.items()) if v != alpha},
        "fan_in_fan_out": bool(adapter.base_model.fan_in_fan_out),
        "lora_dropout": 0.0,
        "bias": "none",
        "modules_to_save": sorted(m for m, e in adapter.saved.items() if e.origin == "modules_to_save")
        or None,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
