"""Builtin plugin: PEFT LoRA adapter directories (``adapter_config.json`` +
``adapter_model.safetensors``), read and written with exactly PEFT's semantics."""

from adaptkit.api import hookimpl
from adaptkit_peft.format import PeftFormat


@hookimpl
def register_formats(register):
    register(PeftFormat())
