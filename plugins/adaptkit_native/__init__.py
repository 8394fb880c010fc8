"""Builtin plugin: the native adaptkit adapter format (one ``.safetensors`` + manifest)."""

from adaptkit.api import hookimpl
from adaptkit_native.format import NativeFormat


@hookimpl
def register_formats(register):
    register(NativeFormat())
