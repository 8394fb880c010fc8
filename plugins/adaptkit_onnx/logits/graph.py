"""Exporting a causal LM to ONNX with the dynamo exporter: ``input_ids`` (+ ``attention_mask``)
with dynamic batch and sequence axes in, ``logits`` out.

With ``lora`` targets, each target's ``lora_A`` (``r × in``) and ``lora_B`` (``out × r``, scale
folded in) become named graph inputs — ``<module>.lora_A`` / ``<module>.lora_B`` — each with a
zero initializer of the same name, so the graph runs as the plain base model when no adapter
is active and ONNX Runtime's ``RunOptions.add_active_adapter`` overrides them per run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptkit.api import AdaptkitError
from adaptkit.api.nn import module_kind, replace_module

#: The protobuf limit is 2 GiB; stay clear of it.
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2
#: The lowest opset torch's dynamo exporter has operator implementations for. It accepts lower
#: ones but then tries a version conversion, and where that fails keeps this opset without
#: saying so: a request below it is refused instead.
MIN_OPSET = 18


def check_opset(opset: Any) -> int | None:
    """``--opset`` checked: None (the exporter's default) or an integer from :data:`MIN_OPSET`
    to the newest opset the installed ``onnx`` package knows.

    Raises:
        AdaptkitError: naming ``--opset`` and the valid range.
    """
    if opset is None:
        return None
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise AdaptkitError(
            f"--opset {opset!r} is out of range: the logits-only graph is exported at opset "
            f"{MIN_OPSET} to {newest} (the newest the installed onnx {onnx.__version__} knows)"
        )
    return opset


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class LoraInputLayer(nn.Module):
    """A base layer plus a LoRA update whose factors are supplied per call (graph inputs)."""

    def __init__(self, base: nn.Module, conv1d: bool) -> None:
        super().__init__()
        self.base, self.conv1d = base, conv1d
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.A is not None and self.B is not None
        return self.base(x) + ((x @ self.A.T) @ self.B.T).to(x.dtype)


class _WithLoraInputs(nn.Module):
    def __init__(self, model: nn.Module, layers: dict[str, LoraInputLayer]) -> None:
        super().__init__()
        self.model, self.names = model, list(layers)
        self._layers = layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loras: list[torch.Tensor]
    ) -> torch.Tensor:
        # The factors reach the layers through attributes set here; the exporter traces this
        # Python, so they become graph inputs feeding those layers.
        for i, name in enumerate(self.names):
            self._layers[name].A, self._layers[name].B = loras[2 * i], loras[2 * i + 1]
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def lora_input_names(target: str) -> tuple[str, str]:
    return f"{target}.lora_A", f"{target}.lora_B"


def install_lora_inputs(model: nn.Module, shapes: dict[str, tuple[int, int]]) -> dict[str, LoraInputLayer]:
    """Replace each target with a :class:`LoraInputLayer` (``shapes``: target -> (out, in))."""
    layers = {}
    for name in sorted(shapes):
        base = model.get_submodule(name)
        layer = LoraInputLayer(base, conv1d=module_kind(base) == "conv1d")
        replace_module(model, name, layer)
        layers[name] = layer
    return layers


def export_causal_lm(
    model: nn.Module,
    path: Path,
    *,
    opset: int | None = None,
    lora_shapes: dict[str, tuple[int, int]] | None = None,
    rank: int = 0,
    external_data: str = "auto",
) -> dict[str, Any]:
    """Export ``model`` (eval mode) to ``path``; returns facts about what was written.

    Args:
        lora_shapes: target -> (out, in) to expose as LoRA graph inputs of rank ``rank``.
        external_data: ``auto`` (above the 2 GiB protobuf limit), ``always`` or ``never``.
    """
    import onnx

    model.eval()
    dtype = next(model.parameters()).dtype
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    names = ["input_ids", "attention_mask"]
    if lora_shapes:
        layers = install_lora_inputs(model, lora_shapes)
        wrapper: nn.Module = _WithLoraInputs(model, layers)
        loras = []
        for target in layers:
            out_f, in_f = lora_shapes[target]
            loras += [torch.zeros(rank, in_f, dtype=dtype), torch.zeros(out_f, rank, dtype=dtype)]
            names += list(lora_input_names(target))
        args: tuple[Any, ...] = (ids, mask, loras)
        dynamic = {
            "input_ids": {0: batch, 1: seq},
            "attention_mask": {0: batch, 1: seq},
            "loras": [None] * len(loras),
        }
    else:
        wrapper = _LogitsOnly(model)
        args = (ids, mask)
        dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    use_external = external_data == "always" or (external_data == "auto" and param_bytes > PROTOBUF_LIMIT)
    kwargs: dict[str, Any] = {
        "dynamo": True,
        "input_names": names,
        "output_names": ["logits"],
        "dynamic_shapes": dynamic,
        "verbose": False,
    }
    if check_opset(opset) is not None:
        kwargs["opset_version"] = opset
    chatter = io.StringIO()
    try:
        # The exporter narrates its steps on stdout and warns about axis names; keep that
        # out of adaptkit's output unless it fails.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, args, **kwargs)
    except Exception as exc:  # the exporter raises many types; report them as one error
        first = (str(exc).splitlines() or [""])[0][:300]
        raise AdaptkitError(f"torch.onnx.export failed: {type(exc).__name__}: {first}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program.save(str(path), external_data=use_external)
    if lora_shapes:
        _add_zero_defaults(path, [n for n in names if n.endswith((".lora_A", ".lora_B"))], use_external)
    # A failed large export has produced an empty .onnx upstream: check what was written.
    if not path.is_file() or path.stat().st_size == 0:
        raise AdaptkitError("the exporter wrote an empty ONNX file", path=path)
    onnx.checker.check_model(str(path))
    written = _opset(path)
    if opset is not None and written != opset:
        # The exporter falls back to its own opset when a conversion fails; never pass that off
        # as the opset that was asked for.
        raise AdaptkitError(f"--opset {opset} was asked for, but the exporter wrote opset {written}")
    files = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
    return {
        "path": path.name,
        "external_data": use_external,
        "files": files,
        "param_bytes": param_bytes,
        "opset": written,
        "dtype": str(dtype).removeprefix("torch."),
    }


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _opset(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)


def _add_zero_defaults(path: Path, names: list[str], external: bool) -> None:
    """Give each LoRA input a zero initializer: optional inputs, base behaviour by default."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inputs = {i.name: i for i in model.graph.input}
    for name in names:
        ttype = inputs[name].type.tensor_type
        dims = [d.dim_value for d in ttype.shape.dim]
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(dims, dtype=np_dtype), name))
    if external:
        data = path.name + ".data"
        if (path.parent / data).exists():
            os.remove(path.parent / data)
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            location=data,
            all_tensors_to_one_file=True,
        )
    else:
        onnx.save_model(model, str(path))
