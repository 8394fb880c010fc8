"""The generation graph: a KV-cache decoder for ONNX Runtime GenAI, built by its model builder.

- :mod:`~adaptkit_onnx.generation.builder`: the handoff to the builder, run in a child process
  that nothing from the model folder or the working directory can run in;
- :mod:`~adaptkit_onnx.generation.builder_worker`: that child;
- :mod:`~adaptkit_onnx.generation.baked`: ``--onnx``: the adapters baked in (a streamed bake,
  then the builder);
- :mod:`~adaptkit_onnx.generation.switchable`: ``--onnx --lora-inputs``: one base graph, a LoRA
  branch per targeted projection, one ``.onnx_adapter`` file per adapter.

This ``__init__`` imports nothing: the builder child runs the worker through it, and that
process should load only what the worker asks for, in its order (it patches transformers
before the builder imports it).
"""
