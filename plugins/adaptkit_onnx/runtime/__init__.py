"""What reads a finished export: ``adaptkit generate`` and the vetting before it runs anything.

- :mod:`~adaptkit_onnx.runtime.genai_runtime`: the ``onnxruntime-genai`` runtime of ``adaptkit generate``;
- :mod:`~adaptkit_onnx.runtime.export_folder`: every file ONNX Runtime GenAI will open,
  vetted first (an export folder is untrusted input);
- :mod:`~adaptkit_onnx.runtime.genai_config`: ``genai_config.json`` held to what adaptkit writes;
- :mod:`~adaptkit_onnx.runtime.tokenizer_files`: the tokenizer files, bounded and allow-listed;
- :mod:`~adaptkit_onnx.runtime.genai`: an export loaded in ONNX Runtime GenAI.
"""
