"""``python -m adaptkit``: the same CLI as the ``adaptkit`` command (also what torchrun runs)."""

from adaptkit.cli import main

main()
