"""Builtin plugin: the ``onnx`` exporter and ``adaptkit generate``.

The exporter writes a generation-ready model for ONNX Runtime GenAI (KV cache; fp32, fp16 or
int4), or the logits-only graph where the model builder cannot go; with ``--lora-inputs`` one
base graph plus hot-swappable ``.onnx_adapter`` files. Every export is checked against
PyTorch with the adapters applied unmerged before anything is written.
"""

from adaptkit.api import hookimpl
from adaptkit_onnx.exporter import OnnxExporter


@hookimpl
def register_exporters(register):
    register(OnnxExporter())


@hookimpl
def register_commands(cli):
    from adaptkit_onnx.runtime.generate_cmd import command

    cli.add_command(command)
