"""Reading and writing: the native format, strict safetensors/JSON/YAML, SPECs and recipes,
model folders, and the atomic, guarded writes every output goes through."""
