"""Builtin plugin: the ``qlora`` backend — NF4 4-bit base (double quantization, blocksize 64)
via bitsandbytes, LoRA in 16-bit, paged AdamW on CUDA."""

from adaptkit.api import hookimpl
from adaptkit_qlora.backend import QloraBackend


@hookimpl
def register_backends(register):
    register(QloraBackend())
