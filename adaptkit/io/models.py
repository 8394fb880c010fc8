"""Loading base models: Hugging Face model directories or Hub ids (safetensors only).

No remote code runs (``trust_remote_code=False``) and pickled weights are never loaded: a
directory whose weights are only ``*.bin`` is refused. A Hub id (``Qwen/Qwen2.5-0.5B``)
resolves through the local Hugging Face cache first and downloads only configuration,
tokenizer and ``*.safetensors`` files, only when the cache lacks them and offline mode is off.

A base is loaded straight into the dtype it is asked for (``auto``: the checkpoint's own), onto
its device, shard by shard: never first in a wider dtype, never whole on another device.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from adaptkit.errors import AdaptkitError, FormatError

#: ``--base-dtype`` choices; ``auto`` keeps the checkpoint's dtype.
BASE_DTYPES = ("auto", "bf16", "fp16", "fp32")
#: Files a Hub download may fetch: never pickles, never remote code.
HUB_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """A local model directory for ``spec``: the directory itself, or a Hub id resolved through
    the Hugging Face cache (downloading safetensors weights only when they are not cached and
    offline mode is off).

    Raises:
        FormatError: ``spec`` is neither an existing directory nor a cached or downloadable id.
    """
    path = Path(spec)
    text = os.fspath(spec)
    if path.exists() or not _HUB_ID.match(text):
        return check_model_dir(path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(text, allow_patterns=list(HUB_PATTERNS), local_files_only=True)
        if not safetensors_files(Path(folder)):
            raise LocalEntryNotFoundError("no weights cached")
    except (LocalEntryNotFoundError, FileNotFoundError, HFValidationError):
        if constants.HF_HUB_OFFLINE:
            raise FormatError(
                f"{text!r} is not a local directory and is not in the Hugging Face cache, and "
                "offline mode is on (HF_HUB_OFFLINE)",
                hint="download it once with network access, or pass a model directory",
            ) from None
        try:
            folder = snapshot_download(text, allow_patterns=list(HUB_PATTERNS))
        except Exception as exc:  # network, auth, missing repo: one line, not a traceback
            raise FormatError(
                f"cannot fetch {text!r} from the Hugging Face Hub: {' '.join(str(exc).split())[:200]}",
                hint="check the id, your network, or pass a model directory",
            ) from None
    return check_model_dir(folder)


def torch_dtype(name: str, folder: Path | None = None) -> Any:
    """The torch dtype for a ``--base-dtype`` name; ``auto`` reads the checkpoint's."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name in table:
        return table[name]
    if name != "auto":
        raise FormatError(f"unknown base dtype {name!r}; valid: {', '.join(BASE_DTYPES)}")
    return checkpoint_dtype(folder) if folder is not None else torch.float32


def checkpoint_dtype(folder: Path) -> Any:
    """The dtype most of a checkpoint's floating-point parameters are stored in."""
    import torch

    from adaptkit.io.safetensors_strict import read_header

    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    counts: dict[Any, int] = {}
    for f in safetensors_files(folder):
        header, _, _ = read_header(f)
        for key, info in header.items():
            if key != "__metadata__" and isinstance(info, dict) and info.get("dtype") in names:
                n = 1
                for d in info.get("shape") or ():
                    n *= int(d)
                counts[names[info["dtype"]]] = counts.get(names[info["dtype"]], 0) + n
    return max(counts, key=counts.get) if counts else torch.float32


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
            "model must be a Hugging Face model directory (config.json + *.safetensors) or a Hub id "
            "(org/name)",
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
    check_model_files(folder)
    return folder


#: config.json is a few KB; label maps make some a few MB.
MAX_CONFIG_BYTES = 16 << 20


def check_model_files(folder: Path) -> None:
    """Vet what transformers would parse, before it does: ``config.json`` (a JSON object
    within :data:`MAX_CONFIG_BYTES`, strict and bounded, see :mod:`adaptkit.io.jsonio`) and every
    weight file's header (entries with a shape that fills their byte span, offsets in bounds,
    no overlaps). Reads headers only.

    Raises:
        FormatError / InvalidAdapterError: naming the file and the tensor.
    """
    from adaptkit.io.jsonio import read_json_file
    from adaptkit.io.safetensors_strict import checked_header

    config = read_json_file(folder / "config.json", what="config.json", max_bytes=MAX_CONFIG_BYTES)
    if "model_type" in config and not isinstance(config["model_type"], str):
        raise FormatError("model_type must be a string", path=folder / "config.json", key="model_type")
    for f in safetensors_files(folder):
        checked_header(f)


def load_causal_lm(
    spec: str | Path,
    *,
    dtype: Any = None,
    device: Any = None,
    load_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer or None)`` for a model directory or Hub id, in eval mode.

    Args:
        spec: Model directory or Hub id (a string), or a folder :func:`resolve_model` already
            returned (a ``Path``: used as is, so its files are not vetted twice).
        dtype: A ``--base-dtype`` name (``auto`` = the checkpoint's), a torch dtype, or
            ``None`` for float32.
        device: Where the weights go as they load (``device_map``); ``None`` keeps them on CPU.
        load_kwargs: Extra ``from_pretrained`` arguments (a backend's ``quantization_config``).
    """
    folder = spec if isinstance(spec, Path) else resolve_model(spec)
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # adaptkit shows its own progress; keep stderr clean
    resolved = torch_dtype(dtype, folder) if isinstance(dtype, str) else (dtype or torch.float32)
    kwargs: dict[str, Any] = dict(load_kwargs or {})
    if device is not None:
        kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=resolved,
            **kwargs,
        )
    except AdaptkitError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # transformers' many ways of rejecting a config or checkpoint
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FormatError(f"cannot load the model: {why}", path=folder) from None
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
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a broken tokenizer.json fails in the tokenizers library's own ways
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FormatError(f"cannot load the tokenizer: {why}", path=folder) from None


#: Weight and pickle files, never copied as side files.
_NOT_SIDE = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


def side_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file that really belongs to the model, else None.

    A symlink is followed only into the model folder itself or, for a Hugging Face cache
    snapshot (``.../snapshots/<rev>/``), into that repository's cache (its ``blobs/``): a
    model folder whose ``tokenizer.json`` links to ``/etc/shadow`` does not get it copied into
    an export.
    """
    path = folder / name
    if not path.is_file():
        return None
    real = path.resolve()
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":
        roots.append(folder.parent.parent.resolve())
    return path if any(root in real.parents for root in roots) else None


def side_files(folder: Path) -> list[Path]:
    """Every file of a model folder an export copies as is (config, tokenizer, README, ...):
    not weights or pickles, and only what :func:`side_file` accepts."""
    return [
        p
        for item in sorted(folder.iterdir())
        if not item.name.endswith(_NOT_SIDE) and (p := side_file(folder, item.name)) is not None
    ]
