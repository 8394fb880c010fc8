"""Loading base models: Hugging Face model directories (safetensors only) and built-in ones.

Nothing is downloaded and no remote code runs: ``local_files_only=True``,
``trust_remote_code=False``, and a directory whose weights are only pickles (``*.bin``) is
refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adaptkit.errors import FormatError

#: Built-in models: name -> function building (model, tokenizer) deterministically.
BUILTIN: dict[str, Any] = {}


def safetensors_files(folder: Path) -> list[Path]:
    """The model weight files of a HF directory (single file or shards)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(folder.glob("model-*-of-*.safetensors"))


def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """A HF model directory with ``config.json`` and safetensors weights, or a clear error."""
    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(
            "model must be a Hugging Face model directory (config.json + "
            "*.safetensors) or a built-in name: " + ", ".join(sorted(BUILTIN)),
            path=folder,
        )
    if not (folder / "config.json").is_file():
        raise FormatError("not a Hugging Face model directory: config.json is missing", path=folder)
    if not safetensors_files(folder):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        extra = f" (found {pickles[0]}: a pickle, never loaded)" if pickles else ""
        raise FormatError(
            f"no *.safetensors weights in the model directory{extra}",
            path=folder,
            hint="re-save the model with save_pretrained(safe_serialization=True)",
        )
    return folder


def load_causal_lm(spec: str, *, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer or None)`` for a model directory or built-in name, in eval mode."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    folder = check_model_dir(spec)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # adaptkit shows its own progress; keep stderr clean

    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=dtype or torch.float32,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise FormatError(f"cannot load the model: {' '.join(str(exc).split())[:300]}", path=folder) from None
    return model.eval(), load_tokenizer(folder)


def load_tokenizer(folder: Path) -> Any:
    """The directory's tokenizer, or ``None`` if it has none."""
    if not any(
        (folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"cannot load the tokenizer: {exc}", path=folder) from None


def register_builtin(name: str):
    """Decorator registering a deterministic built-in model factory."""

    def deco(fn):
        BUILTIN[name] = fn
        return fn

    return deco
