"""Builtin plugin: the ``onnx`` exporter and the ``onnxruntime-genai`` runtime of ``adaptkit generate``.

The exporter writes a generation-ready model for ONNX Runtime GenAI (KV cache; fp32, fp16 or
int4), or the logits-only graph where the model builder cannot go; with ``--lora-inputs`` one
base graph plus hot-swappable ``.onnx_adapter`` files. Every export is checked against
PyTorch with the adapters applied unmerged before anything is written.

The package is cut by what each part makes::

    exporter.py          OnnxExporter: its options, which graph, dispatch
    generation/          the generation graph (ONNX Runtime GenAI's model builder)
        builder.py           the handoff: supported models, the isolated child process
        builder_worker.py    that child
        baked.py             --onnx: bake (streamed), build, verify
        switchable.py        --onnx --lora-inputs: LoRA branches on the built graph
    logits/              the logits-only graph (torch.onnx, no KV cache)
        export.py            one base load, baked or switchable, side files, report
        graph.py             torch.onnx export, optionally with LoRA factors as inputs
        baked.py             reference first, then bake in place, export, verify
        switchable.py        LoRA factors as graph inputs, one .onnx_adapter per adapter
    adapter_files.py     what both graphs' --lora-inputs share: the files and adapters.json
    parity.py            one tolerance table, the reference, both graphs' checks
    memory.py            freeing memory between an export's phases
    runtime/             what reads a finished export
        genai_runtime.py     the onnxruntime-genai runtime of adaptkit generate
        export_folder.py     every file ONNX Runtime GenAI opens, vetted first
        genai_config.py      genai_config.json held to what adaptkit writes
        tokenizer_files.py   the tokenizer files, bounded and allow-listed
        genai.py             an export loaded in ONNX Runtime GenAI

Imports run one way, down this list: ``exporter``; ``generation`` and ``logits`` (never each
other); ``parity`` and ``adapter_files``; ``memory`` and ``runtime``. ``adaptkit --help``
loads only this module and ``exporter``, neither of which imports torch
or onnx.
"""

from adaptkit.api import hookimpl
from adaptkit_onnx.exporter import OnnxExporter


@hookimpl
def register_exporters(register):
    register(OnnxExporter())


@hookimpl
def register_runtimes(register):
    from adaptkit_onnx.runtime.genai_runtime import GenaiRuntime

    register(GenaiRuntime())
