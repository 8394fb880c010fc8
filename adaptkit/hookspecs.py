"""Deprecated: moved to :mod:`adaptkit.plugins.hookspecs` (``adaptkit.hookimpl`` is the usual import)."""

import warnings

from adaptkit.plugins.hookspecs import *  # noqa: F403
from adaptkit.plugins.hookspecs import hookimpl, hookspec  # noqa: F401

warnings.warn("adaptkit.hookspecs moved to adaptkit.plugins.hookspecs", DeprecationWarning, stacklevel=2)
