"""adaptkit's GGUF plugin: LoRA adapters for llama.cpp, llama-server, Ollama and llama-cpp-python
(the ``gguf`` exporter), and the ``llama-cpp`` runtime of ``adaptkit generate``.

Built on the public plugin API alone (``adaptkit.api``), like a third-party plugin; the file is
written with llama.cpp's own writer, the ``gguf`` package (the ``gguf`` extra).

    exporter.py       adaptkit export --gguf: checks, combination, one file or one per adapter
    architectures.py  the verified architectures and llama.cpp's query/key row order
    tensors.py        targets -> llama.cpp's LoRA tensors, every target's scale folded exactly
    writer.py         one adapter GGUF with its metadata
    runtime.py        a base GGUF and adapter GGUFs loaded in llama.cpp (llama-cpp-python)
    generate.py       the llama.cpp runtime of adaptkit generate (-a files, adapters.json)
"""

from adaptkit.api import hookimpl
from adaptkit_gguf.exporter import GgufExporter

__all__ = ["GgufExporter"]


@hookimpl
def register_exporters(register):
    register(GgufExporter())


@hookimpl
def register_runtimes(register):
    from adaptkit_gguf.generate import LlamaCppRuntime

    register(LlamaCppRuntime())
