"""Training data: JSONL (``text`` or ``input_ids`` per line) or a plain text file.

* JSONL with ``{"text": "..."}`` — tokenised with the model directory's tokenizer (an EOS
  token is appended when the tokenizer has one);
* JSONL with ``{"input_ids": [1, 2, 3]}`` — used as is (ids checked against the vocabulary);
* any other file — plain UTF-8 text, tokenised as one stream and cut into ``seq_len`` blocks.

* JSONL with ``{"prompt": "...", "completion": "..."}`` — the loss covers the completion
  only.

Records longer than ``seq_len`` are an error naming the line, unless ``truncate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptkit.errors import AdaptkitError, FormatError
from adaptkit.io.fileio import read_regular_file
from adaptkit.io.jsonio import strict_json

MAX_DATA_BYTES = 2 << 30


class Sample(list):
    """Token ids of one training sequence; ``loss_from`` is the index of the first token the
    loss predicts (1 = every next token; larger for prompt/completion records)."""

    loss_from: int = 1

    @classmethod
    def of(cls, ids: list[int], loss_from: int = 1) -> Sample:
        s = cls(ids)
        s.loss_from = loss_from
        return s


@dataclass
class DataFile:
    """A data file read and checked without a model: every JSONL line has the right shape (its
    ``input_ids`` are integer lists of 2+), or the file is non-empty plain text.

    Attributes:
        path: The file.
        lines: For JSONL, ``(where, object)`` per non-blank line; ``None`` for plain text.
        text: For plain text, the whole file.
    """

    path: Path
    lines: list[tuple[str, dict[str, Any]]] | None = None
    text: str | None = None

    @property
    def needs_tokenizer(self) -> bool:
        return self.lines is None or any("input_ids" not in obj for _, obj in self.lines)


def read_data(path: str | Path) -> DataFile:
    """Read and check ``path`` as far as no tokenizer or model is needed: it exists, is UTF-8,
    and holds records of the right shape. Runs before any model loads.

    Raises:
        AdaptkitError / FormatError: naming the file and the line.
    """
    p = Path(path)
    raw = read_regular_file(p, max_bytes=MAX_DATA_BYTES, what="data file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"not UTF-8 text (byte {exc.start})", path=p) from None
    if p.suffix.lower() in (".jsonl", ".json"):
        lines = _jsonl_lines(p, text)
        if not lines:
            raise AdaptkitError(_NO_RECORDS, path=p)
        return DataFile(path=p, lines=lines)
    if not text.strip():
        raise AdaptkitError(_NO_RECORDS, path=p)
    return DataFile(path=p, text=text)


_NO_RECORDS = "no training records (need at least one sequence of 2+ tokens)"


def load_records(
    path: str | Path, tokenizer: Any, *, seq_len: int, vocab_size: int, truncate: bool = False
) -> list[list[int]]:
    """Token id lists, one per training sequence."""
    return tokenize_records(
        read_data(path), tokenizer, seq_len=seq_len, vocab_size=vocab_size, truncate=truncate
    )


def tokenize_records(
    data: DataFile, tokenizer: Any, *, seq_len: int, vocab_size: int | None, truncate: bool = False
) -> list[list[int]]:
    """Token id lists of a :func:`read_data` result, one per training sequence.

    Args:
        vocab_size: Ids must lie below it; ``None`` skips the check (see :func:`check_token_ids`).
    """
    p = data.path
    if data.lines is not None:
        records = _tokenize_lines(p, data.lines, tokenizer, vocab_size)
    else:
        if tokenizer is None:
            raise AdaptkitError(
                "plain text needs a tokenizer, and the model has none",
                path=p,
                hint="give JSONL with input_ids instead",
            )
        ids = tokenizer(data.text, add_special_tokens=False)["input_ids"]
        blocks = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
        records = [(f"block {n}", b) for n, b in enumerate(blocks, 1) if len(b) >= 2]
    if not records:
        raise AdaptkitError(_NO_RECORDS, path=p)
    out = []
    for where, ids in records:
        if len(ids) > seq_len:
            if not truncate:
                raise AdaptkitError(
                    f"record has {len(ids)} tokens, more than --seq-len {seq_len}",
                    path=p,
                    key=where,
                    hint="raise --seq-len or pass --truncate",
                )
            ids = Sample.of(ids[:seq_len], getattr(ids, "loss_from", 1))
        if getattr(ids, "loss_from", 1) >= len(ids):
            raise AdaptkitError("no completion tokens left to learn from", path=p, key=where)
        out.append(ids)
    return out


def check_token_ids(records: list[list[int]], vocab_size: int, *, path: str | Path) -> None:
    """Every id of ``records`` lies in ``0..vocab_size-1`` (the model's embedding, once it is
    loaded, when its config did not say its vocabulary size)."""
    for n, ids in enumerate(records, 1):
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise FormatError(
                f"token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})",
                path=path,
                key=f"record {n}",
            )


def _jsonl_lines(p: Path, text: str) -> list[tuple[str, dict[str, Any]]]:
    """Each non-blank line parsed and checked for its shape (no tokenizer needed)."""
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {n}"
        obj = strict_json(line, what="JSON line", path=p, key=where)
        kinds = [k for k in ("text", "input_ids", "prompt") if isinstance(obj, dict) and k in obj]
        if len(kinds) != 1 or (kinds == ["prompt"]) != ("completion" in obj):
            raise FormatError(
                "each line needs exactly one of 'text', 'input_ids' or 'prompt' + 'completion'",
                path=p,
                key=where,
            )
        if "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not isinstance(obj["completion"], str):
                raise FormatError("'prompt' and 'completion' must be strings", path=p, key=where)
        elif "text" in obj:
            if not isinstance(obj["text"], str):
                raise FormatError("'text' must be a string", path=p, key=where)
        else:
            ids = obj["input_ids"]
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise FormatError("'input_ids' must be a list of integers", path=p, key=where)
            if len(ids) < 2:
                raise FormatError("a record needs at least 2 tokens", path=p, key=where)
            bad = [i for i in ids if i < 0]
            if bad:
                raise FormatError(f"token id {bad[0]} is negative", path=p, key=where)
        lines.append((where, obj))
    return lines


def _tokenize_lines(
    p: Path, lines: list[tuple[str, dict[str, Any]]], tokenizer: Any, vocab_size: int | None
) -> list[tuple[str, list[int]]]:
    records = []
    for where, obj in lines:
        if "input_ids" not in obj and tokenizer is None:
            raise AdaptkitError(
                "records have text but the model directory has no tokenizer",
                path=p,
                key=where,
                hint="give pre-tokenised input_ids",
            )
        if "prompt" in obj:
            prompt = list(tokenizer(obj["prompt"])["input_ids"])
            ids = prompt + list(tokenizer(obj["completion"], add_special_tokens=False)["input_ids"])
            eos = getattr(tokenizer, "eos_token_id", None)
            if eos is not None:
                ids.append(eos)
            ids = Sample.of(ids, len(prompt))
        elif "text" in obj:
            ids = list(tokenizer(obj["text"])["input_ids"])
            eos = getattr(tokenizer, "eos_token_id", None)
            if eos is not None and (not ids or ids[-1] != eos):
                ids.append(eos)
        else:
            ids = obj["input_ids"]
            bad = [i for i in ids if vocab_size is not None and not 0 <= i < vocab_size]
            if bad:
                raise FormatError(
                    f"token id {bad[0]} outside the vocabulary (0..{vocab_size - 1})",
                    path=p,
                    key=where,
                )
        if len(ids) < 2:
            raise FormatError("a record needs at least 2 tokens", path=p, key=where)
        records.append((where, ids))
    return records
