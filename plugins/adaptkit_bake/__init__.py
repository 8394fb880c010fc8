"""Builtin plugin: the ``merged`` exporter (``adaptkit export --merged``) — a Hugging Face model
directory with ``W + ΔW`` baked in, streamed tensor by tensor from the base's safetensors files."""

from adaptkit.api import hookimpl
from adaptkit_bake.exporter import BakeExporter


@hookimpl
def register_exporters(register):
    register(BakeExporter())
