"""Run ``adaptkit`` commands one after another in one interpreter: ``python run_commands.py
'["train", ...]' '["train", ...]'``, each argument a JSON list of arguments. Under ``torchrun``
every process runs them in turn, each run joining and leaving the process group, so one launch
(whose start-up, three interpreters importing torch, costs more than a tiny model's training)
serves several runs. Exits with the first non-zero exit code."""

import json
import sys

from adaptkit.cli import main

for command in sys.argv[1:]:
    code = main(json.loads(command))
    if code:
        sys.exit(code)
