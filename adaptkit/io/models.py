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
from adaptkit.io.model_config import (
    MAX_CONFIG_BYTES,
    brief,
    check_config_fields,
    check_no_remote_code,
)

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
        FormatError: ``spec`` is neither an existing directory nor a cached or downloadable id,
            or the folder (or cache) it names is unfit (see :func:`check_model_dir`).
    """
    path = Path(spec)
    text = os.fspath(spec)
    if os.path.lexists(path) or not _HUB_ID.match(text):
        return check_model_dir(path)
    folder, repo = _hub_snapshot(text)
    return check_model_dir(folder, hub_repo=repo)


def _hub_snapshot(repo_id: str) -> tuple[Path, Path]:
    """``(snapshot folder, repository cache folder)`` of a Hub id, from the cache or downloaded."""
    from huggingface_hub import constants, snapshot_download

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    _check_hub_layout(repo)
    _check_hub_ref(repo)
    try:
        folder = snapshot_download(repo_id, allow_patterns=list(HUB_PATTERNS), local_files_only=True)
        if not safetensors_files(Path(folder)):
            raise FileNotFoundError("no weights cached")
    except Exception:  # not cached, partly cached, or a cache huggingface_hub cannot read
        if constants.HF_HUB_OFFLINE:
            raise FormatError(
                f"{repo_id!r} is not a local directory and is not in the Hugging Face cache, and "
                "offline mode is on (HF_HUB_OFFLINE)",
                hint="download it once with network access, or pass a model directory",
            ) from None
        try:
            folder = snapshot_download(repo_id, allow_patterns=list(HUB_PATTERNS))
        except Exception as exc:  # network, auth, missing repo: one line, not a traceback
            raise FormatError(
                f"cannot fetch {repo_id!r} from the Hugging Face Hub: {' '.join(str(exc).split())[:200]}",
                hint="check the id, your network, or pass a model directory",
            ) from None
    folder = Path(folder)
    if folder.parent != repo / "snapshots" or not _COMMIT.fullmatch(folder.name):
        raise FormatError("the Hugging Face cache gave a snapshot outside this repository", path=folder)
    return folder, repo


#: A Hub commit id, the only thing a cache's ``refs/<branch>`` file may hold.
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _check_hub_layout(repo: Path) -> None:
    """Refuse a cache repository whose ``blobs/``, ``snapshots/`` or ``refs/`` is a link: a
    ``blobs`` linked to ``/`` would make every file on the machine "a blob" of it."""
    from adaptkit.io.fileio import real_path

    for part in ("blobs", "snapshots", "refs"):
        if (repo / part).is_symlink():
            raise FormatError(
                f"the Hugging Face cache's {part}/ is a link (to {real_path(repo / part)}); "
                "adaptkit reads a cache only inside its repository folder",
                path=repo / part,
            )


def _check_hub_ref(repo: Path) -> None:
    """Refuse a cache whose ``refs/main`` is anything but a commit id in a file of the
    repository's own: huggingface_hub joins its text onto ``snapshots/`` unchecked, so ``..``
    or an absolute path there would lead outside the cache."""
    from adaptkit.io.fileio import is_within

    ref = repo / "refs" / "main"
    if not os.path.lexists(ref):
        return
    if not is_within(ref, repo) or not ref.is_file():
        raise FormatError("not a file inside the repository's cache", path=ref)
    with open(ref, "rb") as fh:
        raw = fh.read(64)
    if not _COMMIT.fullmatch(raw.decode("ascii", errors="replace")):
        raise FormatError(
            f"does not hold a commit id (40 hex digits): {raw[:48]!r}",
            path=ref,
            hint="delete this repository from the Hugging Face cache and download it again",
        )


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


def check_model_dir(path: str | os.PathLike[str], *, hub_repo: Path | None = None) -> Path:
    """A HF model directory with ``config.json`` and safetensors weights, or a clear error.

    Args:
        path: The model folder.
        hub_repo: The Hugging Face cache repository folder ``path`` is a snapshot of (found from
            the path itself when it ends in ``snapshots/<rev>``).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FormatError(
            "model must be a Hugging Face model directory (config.json + *.safetensors) or a Hub id "
            "(org/name)",
            path=folder,
        )
    check_contained(folder, hub_repo)
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


def hub_repository(folder: Path) -> Path | None:
    """The Hugging Face cache repository (``models--org--name``) ``folder`` is a snapshot of,
    judged by its path (``.../models--org--name/snapshots/<40-hex commit>``), or ``None``: a
    folder not named like a snapshot gets no ``blobs/`` to link into."""
    repo = folder.parent.parent
    is_snapshot = folder.parent.name == "snapshots" and _COMMIT.fullmatch(folder.name) is not None
    return repo if is_snapshot and repo.name.startswith("models--") else None


def model_roots(folder: Path, hub_repo: Path | None = None) -> list[Path]:
    """The real folders a model's files may lie in: the model folder itself and, for a Hugging
    Face cache snapshot (``.../snapshots/<rev>/``), that repository's ``blobs/``."""
    from adaptkit.io.fileio import real_path

    hub_repo = hub_repo or hub_repository(folder)
    roots = [real_path(folder)]
    if hub_repo is not None:
        roots.append(real_path(hub_repo) / "blobs")
    return roots


#: A model folder (its whole tree) holds at most this many entries; a Hub snapshot of a 405B
#: model has a few hundred.
MAX_MODEL_ENTRIES = 100_000


def check_contained(folder: Path, hub_repo: Path | None = None) -> None:
    """Refuse a model folder with an entry, at any depth, that links outside :func:`model_roots`.

    transformers, the ONNX model builder and the exports read whatever files a model folder
    names (config, weights, index, tokenizer, ``additional_chat_templates/``, ...): the only way
    to be sure none of them reads a file elsewhere (``tokenizer.json -> ~/.ssh/id_rsa``) is a
    folder whose tree has no link leading out. A Hub snapshot must itself lie inside its
    repository's cache, and that repository's ``blobs/`` and ``snapshots/`` must be real
    folders of it (a ``blobs`` linked to ``/`` would make every link "a blob").

    Raises:
        FormatError: naming the entry and where it leads.
    """
    from adaptkit.io.fileio import is_within, real_path

    hub_repo = hub_repo or hub_repository(folder)
    if hub_repo is not None:
        _check_hub_layout(hub_repo)
        if not is_within(folder, hub_repo):
            real = real_path(folder)
            raise FormatError(
                f"this Hugging Face cache snapshot leads outside its repository's cache (to {real})",
                path=folder,
            )
    roots = model_roots(folder, hub_repo)
    where = "the model folder" + (" or its repository's blobs/" if hub_repo is not None else "")
    seen = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_MODEL_ENTRIES:
                raise FormatError(f"the model folder has more than {MAX_MODEL_ENTRIES} entries", path=folder)
            entry = Path(top, name)
            if entry.is_symlink() and not any(is_within(entry, root) for root in roots):
                raise FormatError(
                    f"links outside {where} (to {real_path(entry)}); adaptkit reads nothing outside a model",
                    path=entry,
                    hint="copy the file into the model folder, or link the whole folder instead",
                )


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
    check_config_fields(config, folder / "config.json")
    check_no_remote_code(folder, config)
    for f in safetensors_files(folder):
        checked_header(f)
    check_weight_index(folder)


def check_weight_index(folder: Path) -> None:
    """A sharded checkpoint's ``model.safetensors.index.json`` may name only the shards
    checked above: transformers opens whatever its ``weight_map`` lists, so a name in a
    subfolder or of another pattern would be read without its header having been vetted.

    Raises:
        FormatError: naming the index and the file.
    """
    from adaptkit.io.jsonio import read_json_file

    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file() or not index.is_file():
        return  # transformers reads the single file and never this index
    doc = read_json_file(index, what="model.safetensors.index.json", max_bytes=MAX_CONFIG_BYTES)
    weight_map = doc.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise FormatError("must map tensor names to file names", path=index, key="weight_map")
    shards = {f.name for f in safetensors_files(folder)}
    for name in sorted(set(weight_map.values())):
        if name not in shards:
            raise FormatError(
                f"names {brief(name)}, which is not one of this folder's model-*-of-*.safetensors shards",
                path=index,
                key="weight_map",
            )


def load_causal_lm(
    spec: str | Path,
    *,
    dtype: Any = None,
    device: Any = None,
    load_kwargs: dict[str, Any] | None = None,
    tokenizer: bool = True,
) -> tuple[Any, Any]:
    """``(model, tokenizer or None)`` for a model directory or Hub id, in eval mode.

    Args:
        spec: Model directory or Hub id (a string), or a folder :func:`resolve_model` already
            returned (a ``Path``: used as is, so its files are not vetted twice).
        dtype: A ``--base-dtype`` name (``auto`` = the checkpoint's), a torch dtype, or
            ``None`` for float32.
        device: Where the weights go as they load (``device_map``); ``None`` keeps them on CPU.
        load_kwargs: Extra ``from_pretrained`` arguments (a backend's ``quantization_config``).
        tokenizer: Load the tokenizer too (``False``: the second item is ``None``).
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
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: refused below in one line instead
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=resolved,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported by name below, never kept
            **kwargs,
        )
    except AdaptkitError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # transformers' many ways of rejecting a config or checkpoint
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FormatError(f"cannot load the model: {why}", path=folder) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    check_loading_info(folder, info)
    return model.eval(), (load_tokenizer(folder) if tokenizer else None)


def check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """Refuse a load that left any weight randomly initialised: a tensor the model needs that
    the checkpoint lacks (``num_hidden_layers`` above the checkpoint's, a deleted layer), one
    the model has no place for (another ``model_type``), or one of another shape. transformers
    already leaves out what it legitimately does not store (tied ``lm_head.weight``,
    non-persistent buffers).

    Raises:
        FormatError: naming the folder and the first such tensor.
    """
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or ()]
    for kind, keys in (
        ("lacks", info.get("missing_keys")),
        ("holds a tensor the model has no place for:", info.get("unexpected_keys")),
        ("holds a tensor of another shape than config.json gives:", mismatched),
    ):
        if keys:
            raise weights_mismatch(folder, kind, sorted(keys))


def weights_mismatch(folder: Path, kind: str, keys: list[str]) -> FormatError:
    """The one-line refusal of a checkpoint that does not match its ``config.json``."""
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return FormatError(
        f"the checkpoint {kind} {keys[0]}{more}; config.json and the weights disagree, and "
        "adaptkit never runs a model with randomly initialised weights",
        path=folder,
        hint="check config.json (model_type, num_hidden_layers, sizes) against the weights",
    )


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


def load_config(folder: Path) -> Any:
    """The folder's Hugging Face config (no remote code), or one line naming the folder."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # transformers' own checks of a config's values
        why = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise FormatError(f"cannot load config.json: {why}", path=folder) from None


#: Weight and pickle files, never copied as side files.
_NOT_SIDE = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


def side_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file that really belongs to the model, else None.

    A symlink is followed only into :func:`model_roots` (the model folder itself or, for a
    Hugging Face cache snapshot, that repository's ``blobs/``): a model folder whose
    ``tokenizer.json`` links to ``/etc/shadow`` does not get it copied into an export. Code
    (``*.py``, ``*.so``, ... see :data:`adaptkit.io.output_guard.CODE_SUFFIXES`) never is: an
    ``auto_map`` module copied next to a config would be one import away from running.
    """
    from adaptkit.io.fileio import is_within
    from adaptkit.io.output_guard import CODE_SUFFIXES

    path = folder / name
    if Path(name).suffix.lower() in CODE_SUFFIXES or not path.is_file():
        return None
    return path if any(is_within(path, root) for root in model_roots(folder)) else None


def side_files(folder: Path) -> list[Path]:
    """Every file of a model folder an export copies as is (config, tokenizer, README, ...):
    not weights, pickles or code, and only what :func:`side_file` accepts."""
    return [
        p
        for item in sorted(folder.iterdir())
        if not item.name.lower().endswith(_NOT_SIDE) and (p := side_file(folder, item.name)) is not None
    ]
