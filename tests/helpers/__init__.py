"""Helpers shared by the suite, one home for each kind of setup.

- ``models``: tiny Hugging Face models built in code (random, seeded, nothing downloaded);
- ``adapters``: adapters built in code and with the real PEFT library;
- ``files``: files crafted byte by byte (raw safetensors, JSON lines, a Hub cache, a canary
  library);
- ``training``: training configs and records;
- ``cli``: the CLI error contract as one assertion;
- ``peft_parity``: published adapters rebuilt with PEFT, and exports checked against PEFT's
  unmerged model.

Where the library has a public builder (``adaptkit.testing.tiny_causal_lm``,
``adaptkit.testing.counting_records``, ``adaptkit.demo.tiny.byte_tokenizer``), tests use it.
"""

from pathlib import Path

#: The repository root.
REPO = Path(__file__).resolve().parents[2]
