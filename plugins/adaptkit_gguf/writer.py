"""One adapter GGUF file, written with llama.cpp's own writer (the ``gguf`` package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit_gguf.tensors import LoraTensors

#: ``--adapter-dtype`` -> how each factor is stored.
DTYPES = ("float32", "float16", "bfloat16")


def write_adapter(
    path: Path,
    tensors: list[LoraTensors],
    *,
    gguf_arch: str,
    alpha: float,
    dtype: str,
    name: str,
    extra: dict[str, Any],
) -> int:
    """Write ``tensors`` as a llama.cpp LoRA adapter; returns the file's size in bytes.

    The metadata llama.cpp reads: ``general.architecture`` (must equal the base's),
    ``general.type = adapter``, ``adapter.type = lora`` and ``adapter.lora.alpha``. ``extra``
    adds ``adaptkit.*`` keys, which llama.cpp ignores.
    """
    import gguf
    import torch

    writer = gguf.GGUFWriter(str(path), arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[gguf_arch]])
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_name(name)
        for key, value in extra.items():
            _add(writer, f"adaptkit.{key}", value)
        for t in tensors:
            # The writer reverses NumPy's shape into GGML's (ne0 = columns), so A (r × in) and
            # B (out × r) arrive as llama.cpp checks them: ne(A) = [in, r], ne(B) = [r, out].
            for suffix, tensor in ((".lora_a", t.a), (".lora_b", t.b)):
                if dtype == "bfloat16":
                    raw = tensor.to(torch.bfloat16).view(torch.int16).numpy().view("uint16")
                    writer.add_tensor(t.name + suffix, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
                else:
                    writer.add_tensor(t.name + suffix, tensor.to(getattr(torch, dtype)).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path.stat().st_size


def _add(writer: Any, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))
