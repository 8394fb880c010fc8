"""``python -m adaptkit``: the same CLI as the ``adaptkit`` command (also what torchrun runs).

The package's ``__init__`` has already taken the working directory off ``sys.path``
(:mod:`adaptkit._launch`), before any other import.
"""

from adaptkit.cli import main

main()
