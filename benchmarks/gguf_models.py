"""Base GGUF files for the llama.cpp benchmarks, cached beside the models they come from.

The float16 base is written from the Hugging Face checkpoint by the test suite's writer
(``tests/helpers/gguf_base.py``, the ``gguf`` package: its docstring says why not llama.cpp's
converter); the quantized ones are made from it by llama.cpp's own quantizer
(``llama_model_quantize``, through llama-cpp-python), as ``llama-quantize`` would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: llama.cpp's file types (``enum llama_ftype``) for the quantizations measured here.
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}


def base_gguf(model: Path, dtype: str = "f16") -> Path:
    """``model`` (a Hugging Face folder) as a base GGUF in ``dtype``, written once, atomically."""
    from tests.helpers.gguf_base import write_base_gguf

    out = model.parent / f"{model.name}-{dtype}.gguf"
    if not out.exists():
        fd, tmp = tempfile.mkstemp(dir=model.parent, suffix=".gguf.tmp")
        os.close(fd)
        write_base_gguf(model, Path(tmp), dtype=dtype)
        os.replace(tmp, out)
    return out


def quantized(model: Path, kind: str, source: str = "f16") -> Path:
    """``model``'s base GGUF quantized to ``kind`` (``Q8_0``, ``Q4_0``, ``Q4_K_M``) by llama.cpp,
    from its ``source`` (``f16`` or ``f32``) base GGUF."""
    import llama_cpp

    out = model.parent / f"{model.name}-{kind.lower()}.gguf"
    if out.exists():
        return out
    src = base_gguf(model, source)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = len(os.sched_getaffinity(0))
    tmp = out.with_suffix(".gguf.tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {src} to {kind}")
    os.replace(tmp, out)
    return out
