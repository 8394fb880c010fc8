"""Builtin plugin: the ``lora`` training backend (16-bit LoRA on a frozen base).

The LoRA machinery it uses lives in core, :mod:`adaptkit.nn`, where every other part (the
qlora backend, the exporters, the demo) reaches it too.
"""

from adaptkit.api import hookimpl
from adaptkit_lora.backend import LoraBackend

__all__ = ["LoraBackend"]


@hookimpl
def register_backends(register):
    register(LoraBackend())
