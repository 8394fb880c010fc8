"""Builtin plugin: the ``onnx`` exporter — pre-merged ONNX with parity checks, or the base
graph with LoRA factors as inputs plus hot-swappable ONNX Runtime ``.onnx_adapter`` files."""

from adaptkit.plugins.hookspecs import hookimpl
from adaptkit_onnx.exporter import OnnxExporter


@hookimpl
def register_exporters(register):
    register(OnnxExporter())
