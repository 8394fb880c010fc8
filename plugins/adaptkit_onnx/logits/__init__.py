"""The logits-only graph: ``input_ids, attention_mask → logits``, exported by torch.onnx (dynamo).

The fallback where the model builder cannot go, and the graph for scoring rather than
generating. It has no KV cache.

- :mod:`~adaptkit_onnx.logits.export`: the export itself (one base load, side files, report);
- :mod:`~adaptkit_onnx.logits.graph`: ``torch.onnx.export`` of a causal LM, optionally with
  LoRA factors as graph inputs;
- :mod:`~adaptkit_onnx.logits.baked`: the adapters baked into the weights;
- :mod:`~adaptkit_onnx.logits.switchable`: ``--lora-inputs``: one base graph, one
  ``.onnx_adapter`` file per adapter, switched per run.
"""
