"""Reading and writing for plugins: every write atomic, every read capped and strict.

Use these rather than ``open``: an output appears only when complete (and an existing one
survives a failed run); an input is a regular file inside its folder, read with a size cap;
JSON refuses duplicate keys and non-finite numbers; safetensors headers are checked before a
byte of data is read.
"""

from __future__ import annotations

from adaptkit.io.atomic import atomic_directory, atomic_path, scratch_directory
from adaptkit.io.fileio import read_regular_file
from adaptkit.io.jsonio import read_json_file, strict_json
from adaptkit.io.native import is_native_adapter, load_adapter, save_adapter, unshared
from adaptkit.io.output_guard import ADAPTER_FILE, ADAPTER_FOLDER, OutputKind
from adaptkit.io.safetensors_strict import read_tensors
from adaptkit.io.schemas import validate_document
from adaptkit.io.specs import load_spec

__all__ = [
    "ADAPTER_FILE",
    "ADAPTER_FOLDER",
    "OutputKind",
    "atomic_directory",
    "atomic_path",
    "is_native_adapter",
    "load_adapter",
    "load_spec",
    "read_json_file",
    "read_regular_file",
    "read_tensors",
    "save_adapter",
    "scratch_directory",
    "strict_json",
    "unshared",
    "validate_document",
]
