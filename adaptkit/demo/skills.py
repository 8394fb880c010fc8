"""Two synthetic skills over disjoint inputs, and exact-match evaluation.

Prompts look like ``"<input>="`` and the answer is the next ``len(input)`` characters:

* ``upper`` (skill A): lowercase words → uppercase, ``"hello=" → "HELLO"``;
* ``digits`` (skill B): digit strings → each digit plus one modulo 10, ``"0391=" → "1402"``;
* ``copy`` (what the base model is pre-trained on): ``"hello=" → "hello"``, ``"0391=" → "0391"``
  (lower case, upper case and digits).

Skills A and B see disjoint inputs (letters vs digits), so one adapter can hold both. The
base also learns both transforms behind explicit prefixes (``u:hello=`` → ``HELLO``); an
adapter then only has to make the transform the default — a small, low-rank change (as with
real LLMs, where adapters steer what the base already knows). Trained on its own skill alone,
each adapter also shifts how the model treats the other skill's inputs, so static
combinations interfere; :func:`identity_examples` (the demo's ``--replay``) teaches each to
leave those inputs alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


def _word(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(3, 6)))


SKILLS: dict[str, tuple[str, Callable[[str], str]]] = {
    "upper": (LETTERS, str.upper),
    "digits": (DIGITS, lambda s: "".join(str((int(c) + 1) % 10) for c in s)),
}


#: Instruction prefixes the base model is pre-trained on; the adapters teach it to apply the
#: same transforms *without* being asked (``hello=`` → ``HELLO``).
PREFIXES = {"upper": "u:", "digits": "i:"}


def pretraining_examples(n: int, seed: int) -> list[tuple[str, str]]:
    """The base's curriculum: half ``copy``, half the skills behind an explicit prefix."""
    rng = random.Random(f"pretrain/{seed}")
    out = []
    for pair in examples("copy", n // 2, seed):
        out.append(pair)
    for skill, prefix in PREFIXES.items():
        for prompt, answer in examples(skill, n // 4, seed + rng.randint(1, 1 << 30)):
            out.append((prefix + prompt, answer))
    rng.shuffle(out)
    return out


def examples(skill: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (prompt, answer) pairs; ``skill`` is ``upper``, ``digits`` or ``copy``."""
    rng = random.Random(f"{skill}/{seed}")
    out = []
    for _ in range(n):
        if skill == "copy":
            # Upper case too, so every character an adapter must produce is one the base
            # model has learned to emit (its output head is frozen under LoRA).
            word = _word(rng, rng.choice([LETTERS, LETTERS.upper(), DIGITS]))
            out.append((word + "=", word))
        else:
            alphabet, fn = SKILLS[skill]
            word = _word(rng, alphabet)
            out.append((word + "=", fn(word)))
    return out


def identity_examples(alphabets: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """Copy examples over ``alphabets``: "leave these inputs alone" replay data, so an
    adapter learns its skill without disturbing inputs that belong to other skills."""
    rng = random.Random(f"identity/{seed}")
    out = []
    for _ in range(n):
        word = _word(rng, rng.choice(alphabets))
        out.append((word + "=", word))
    return out


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def training_records(tokenizer, pairs: list[tuple[str, str]]) -> list[list[int]]:
    """``<s>prompt answer</s>`` as token ids; the loss covers the answer and ``</s>`` only."""
    from adaptkit.training.data import Sample

    return [
        Sample.of(
            [tokenizer.bos_token_id, *encode(tokenizer, p + a), tokenizer.eos_token_id],
            1 + len(encode(tokenizer, p)),
        )
        for p, a in pairs
    ]


@torch.no_grad()
def exact_match(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 64) -> float:
    """Fraction of prompts whose greedy continuation of ``len(answer)`` tokens is the answer.

    Prompts of one batch share a length (grouped), so no padding is involved.
    """
    model.eval()
    by_len: dict[int, list[tuple[str, str]]] = {}
    for p, a in pairs:
        by_len.setdefault(len(p), []).append((p, a))
    correct = 0
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            ids = torch.tensor([[tokenizer.bos_token_id, *encode(tokenizer, p)] for p, _ in chunk])
            steps = max(len(a) for _, a in chunk)
            for _ in range(steps):
                logits = model(input_ids=ids, use_cache=False).logits[:, -1]
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            for row, (p, a) in zip(ids.tolist(), chunk, strict=True):
                got = tokenizer.decode(row[1 + len(encode(tokenizer, p)) :][: len(a)])
                correct += got == a
    return correct / max(len(pairs), 1)
