"""Deprecated: moved to :mod:`adaptkit.plugins.contracts` (same names)."""

import warnings

from adaptkit.plugins.contracts import *  # noqa: F403

warnings.warn("adaptkit.contracts moved to adaptkit.plugins.contracts", DeprecationWarning, stacklevel=2)
