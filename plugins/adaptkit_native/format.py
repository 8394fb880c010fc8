"""The native format as a registered format plugin; the file layout lives in
:mod:`adaptkit.io.native` because the core itself writes it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from adaptkit.api import Adapter
from adaptkit.api.files import ADAPTER_FILE


class NativeFormat:
    name = "adaptkit"
    description = "native adaptkit file: one .safetensors with a JSON manifest in its metadata"
    requires: ClassVar[dict[str, str]] = {"safetensors": "safetensors", "torch": "torch"}
    output_kind = ADAPTER_FILE

    def detect(self, path: Path) -> bool:
        from adaptkit.api.files import is_native_adapter

        return is_native_adapter(path)

    def read(self, path: Path) -> Adapter:
        from adaptkit.api.files import load_adapter

        return load_adapter(path)

    def write(self, adapter: Adapter, path: Path, *, overwrite: bool = False) -> Path:
        from adaptkit.api.files import save_adapter

        return save_adapter(adapter, path, overwrite=overwrite)
