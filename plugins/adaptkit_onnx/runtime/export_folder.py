"""An export folder is untrusted input: vet every file ONNX Runtime GenAI will open, first.

A generation-ready export gets downloaded and run with ``adaptkit generate DIR``. The runtime
opens files by itself: ``genai_config.json``, the decoder it names, every external-data file
the ONNX graph names, the tokenizer files (``tokenizer_config.json``, ``tokenizer.json``, the
chat templates) and the ``.onnx_adapter`` files of a ``--lora-inputs`` export. Before any of
that happens, :func:`vet_export_folder` and
:func:`~adaptkit_onnx.runtime.tokenizer_files.vet_tokenizer` check that

- ``genai_config.json`` holds only what adaptkit writes (:mod:`adaptkit_onnx.runtime.genai_config`);
- every file the runtime will open is named by a plain file name and is a regular file whose
  resolved path lies inside the resolved folder (a symlink inside the folder is fine, one
  that leads out is refused);
- the config agrees with the graph (``vocab_size`` is the width of the graph's logits, read
  from the graph's declared shapes without loading any weights);
- the tokenizer files are bounded and of the types the runtime's reader expects
  (:mod:`adaptkit_onnx.runtime.tokenizer_files`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError, FormatError

MAX_MANIFEST_BYTES = 16 << 20

_PLAIN_NAME = re.compile(r"^[^/\\\x00-\x1f]{1,255}$")


@dataclass(frozen=True)
class ExportFolder:
    """A vetted export: its config and what :mod:`adaptkit_onnx.runtime.generate_cmd` needs from it."""

    folder: Path
    config: dict[str, Any]
    vocab_size: int
    context_length: int


def contained_file(folder: Path, name: Any, *, what: str) -> Path:
    """``folder/name`` if ``name`` is a plain file name and the file (after symlinks) is a
    regular file inside ``folder``.

    Args:
        folder: The export folder.
        name: A file name as some file of the export spells it.
        what: What the file is, for messages ("the decoder named in genai_config.json").

    Raises:
        FormatError: naming the file.
    """
    if not isinstance(name, str) or not _PLAIN_NAME.match(name) or name in (".", ".."):
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise FormatError(f"{what} must be a plain file name inside the folder, got {shown}", path=folder)
    path = folder / name
    try:
        path.lstat()
        real = path.resolve(strict=True)
        root = folder.resolve(strict=True)
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise FormatError(f"{what} is missing (or a dangling symlink)", path=path) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise FormatError(f"cannot resolve {what}: {exc}", path=path) from None
    if root not in real.parents:
        raise FormatError(f"{what} is a symlink that leads out of the export folder", path=path)
    if not stat.S_ISREG(mode):
        raise FormatError(f"{what} is not a regular file", path=path)
    return path


def is_export(folder: Path) -> bool:
    """Whether ``folder`` looks like an export (has a ``genai_config.json`` entry of any kind,
    so that a symlinked or broken one is vetted, not mistaken for a model folder)."""
    from adaptkit_onnx.runtime.genai_config import GENAI_CONFIG

    return os.path.lexists(folder / GENAI_CONFIG)


def vet_export_folder(folder: Path) -> ExportFolder:
    """Everything ONNX Runtime GenAI reads to load ``folder``'s model, checked.

    Raises:
        AdaptkitError: one line naming the file and key.
    """
    from adaptkit_onnx.runtime.genai_config import GENAI_CONFIG, read_genai_config

    contained_file(folder, GENAI_CONFIG, what=GENAI_CONFIG)
    config = read_genai_config(folder)
    model = config["model"]
    decoder = contained_file(
        folder, model["decoder"]["filename"], what="the decoder named in genai_config.json"
    )
    if decoder.resolve().parent != folder.resolve():
        # The runtime looks for external data beside the decoder; were it a symlink into a
        # subfolder, "beside" could mean that subfolder, whose files were never checked.
        raise FormatError(
            "the decoder must lie directly in the export folder, not behind a symlink", path=decoder
        )
    graph_vocab = _check_graph(folder, decoder, model["decoder"])
    if model["vocab_size"] != graph_vocab:
        raise FormatError(
            f"vocab_size {model['vocab_size']} does not match the graph's logits ({graph_vocab})",
            path=folder / GENAI_CONFIG,
            key="model.vocab_size",
        )
    return ExportFolder(folder, config, model["vocab_size"], model["context_length"])


def _check_graph(folder: Path, decoder: Path, section: dict[str, Any]) -> int:
    """Check the decoder's external-data files and named inputs/outputs; return the width of
    its logits. The graph is read without its weights (``load_external_data=False``)."""
    import onnx

    try:
        graph_model = onnx.load(str(decoder), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX model
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FormatError(f"not a readable ONNX model: {why}", path=decoder) from None
    for location in sorted(_external_locations(graph_model)):
        contained_file(folder, location, what=f"external data file {location!r} named in {decoder.name}")
    graph = graph_model.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    for key, name in section["inputs"].items():
        if "%d" not in name and name not in inputs:
            raise FormatError(
                f"the graph has no input {name!r}",
                path=folder / "genai_config.json",
                key=f"model.decoder.inputs.{key}",
            )
    logits = outputs.get(section["outputs"]["logits"])
    dims = logits.type.tensor_type.shape.dim if logits is not None else []
    width = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else 0
    if width <= 0:
        raise FormatError(
            f"the graph has no logits output {section['outputs']['logits']!r} with a fixed vocabulary width",
            path=decoder,
        )
    return int(width)


def _external_locations(model: Any) -> set[str]:
    """Every ``location`` an external tensor of ``model`` names, in subgraphs and functions too."""
    tensors: list[Any] = []
    graphs = [model.graph]
    node_lists = [list(f.node) for f in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            tensors.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                tensors.extend((sparse.values, sparse.indices))
            node_lists.append(list(graph.node))
            continue
        for node in node_lists.pop():
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("sparse_tensor"):
                    tensors.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
                for sparse in attr.sparse_tensors:
                    tensors.extend((sparse.values, sparse.indices))
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return {entry.value for t in tensors for entry in t.external_data if entry.key == "location"}


# -- adapters.json ---------------------------------------------------------------------------


def adapter_file(folder: Path, name: str) -> Path:
    """The ``.onnx_adapter`` file that ``adapters.json`` names for adapter ``name``.

    Raises:
        AdaptkitError: no manifest, a malformed one, an unknown name, or a file that is not a
            regular ``.onnx_adapter`` file inside the folder.
    """
    from adaptkit.api.files import read_json_file

    if not os.path.lexists(folder / "adapters.json"):
        raise AdaptkitError(
            f"{folder} was not exported with --lora-inputs (no adapters.json)", key="--adapter-name"
        )
    path = contained_file(folder, "adapters.json", what="adapters.json")
    manifest = read_json_file(path, what="adapters.json", max_bytes=MAX_MANIFEST_BYTES)
    known = manifest.get("adapters")
    if not isinstance(known, dict):
        raise FormatError(
            f"must be an object of adapters, not {type(known).__name__}", path=path, key="adapters"
        )
    if name not in known:
        names = ", ".join(sorted(known)[:20]) or "none"
        raise AdaptkitError(f"no adapter {name!r} in {path}; there are: {names}", key="--adapter-name")
    entry = known[name]
    if not isinstance(entry, dict):
        raise FormatError(f"must be an object, not {type(entry).__name__}", path=path, key=f"adapters.{name}")
    file = entry.get("file")
    if not (isinstance(file, str) and file.endswith(".onnx_adapter")):
        raise FormatError(
            f"must name an .onnx_adapter file, got {file!r:.80}", path=path, key=f"adapters.{name}.file"
        )
    return contained_file(folder, file, what=f"the adapter file of {name!r}")


# -- export time -----------------------------------------------------------------------------


def check_written_export(out: Path) -> dict[str, Any]:
    """Vet a freshly written export as ``generate`` will, and keep its tokenizer only if the
    runtime reads it as transformers does.

    The builder's parity check runs on token ids, so a tokenizer the runtime cannot read (a
    WordLevel ``tokenizer.json``, say) would pass it and then break every ``generate``. Such a
    tokenizer is removed with a warning; the export stays usable with ``--input-ids``.

    Returns:
        The report's ``tokenizer`` entry: ``{"included": bool, "reason": str}``.
    """
    import click

    from adaptkit.api.console import terminal_safe
    from adaptkit_onnx.runtime.tokenizer_files import TOKENIZER_FILES, has_tokenizer, tokenizer_disagreement

    vet_export_folder(out)  # what adaptkit writes must pass what adaptkit reads
    if not has_tokenizer(out):
        return {"included": False, "reason": "the model has no tokenizer"}
    reason = tokenizer_disagreement(out)
    if reason is None:
        return {"included": True}
    removed = [name for name in TOKENIZER_FILES if os.path.lexists(out / name)]
    for name in removed:
        (out / name).unlink()
    click.echo(
        terminal_safe(f"warning: the export has no tokenizer ({reason}); generate with --input-ids"), err=True
    )
    return {"included": False, "reason": reason, "removed": removed}
