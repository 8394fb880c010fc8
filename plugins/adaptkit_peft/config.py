"""``adapter_config.json``: strict parsing, refusals, and PEFT's per-module rank/alpha rules.

PEFT resolves a module's rank and alpha by trying each ``rank_pattern`` / ``alpha_pattern``
key in order and taking the first for which ``re.match(rf"(.*\\.)?({key})$", module)``
succeeds, falling back to ``r`` / ``lora_alpha``. The scale is ``alpha / r``, or
``alpha / sqrt(r)`` with ``use_rslora``.

The keys are regexes from downloaded files, so they are matched with the ``regex`` engine
(``re``-compatible syntax) under a time limit, not Python's ``re``, where a pattern such as
``((a+))+`` can backtrack for minutes: a pattern that does not finish within
:data:`MATCH_SECONDS` for one module is refused, naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError, FormatError

CONFIG_NAME = "adapter_config.json"
MAX_CONFIG_BYTES = 1 << 20

# Settings whose adapters are not a plain sum of s·B@A per module. Each is refused when set
# to anything but PEFT's default, with the reason shown.
_REFUSED: dict[str, str] = {
    "alora_invocation_tokens": "activated LoRA (aLoRA) applies its update only after invocation "
    "tokens, so no single ΔW stands for it",
    "use_qalora": "QA-LoRA pools its inputs, so ΔW is not B@A",
    "layer_replication": "layer replication changes the base model's structure",
    "use_bdlora": "block-diagonal LoRA stores blocks of its factors (lora_A of r × in/nblocks), "
    "which adaptkit does not expand",
    "arrow_config": "Arrow routing mixes several LoRAs per input, so no single ΔW stands for it",
    "velora_config": "VeLoRA saves activation-compression state (lora_velora_embed) beside the "
    "factors; it is not verified against PEFT, so it is refused rather than guessed",
    "monteclora_config": "MonteCLoRA perturbs its factors with learned noise; it is not verified "
    "against PEFT, so it is refused rather than guessed",
    "kasa_config": "KaSA truncated the base weight's SVD when the adapter was created and puts a "
    "trained diagonal between B and A, so it is not a delta on the original base",
    "loftq_config": "LoftQ changes the base weights at initialisation",
}
# init_lora_weights values that rewrite the base model's weights when the adapter is created,
# so the adapter is only meaningful against that modified base.
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
#: Longest a rank_pattern / alpha_pattern key may take to match one module name.
MATCH_SECONDS = 0.25
#: Modules PEFT's task models add to ``modules_to_save`` themselves (``PeftModelForSequenceClassification``
#: and ``...ForTokenClassification`` add the heads ``classifier`` and ``score``,
#: ``...ForQuestionAnswering`` adds ``qa_outputs``): published configs say ``modules_to_save: null``
#: and still carry the trained heads.
TASK_SAVED_MODULES: dict[str, tuple[str, ...]] = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}


def _is_set(value: Any) -> bool:
    return value not in (None, False, "none", {}, [], "")


def load_config(path: Path) -> dict[str, Any]:
    """Read, schema-check and vet an ``adapter_config.json``.

    Raises:
        FormatError / SchemaError / AdaptkitError: naming the file and the key.
    """
    from adaptkit.api.files import read_regular_file, strict_json, validate_document

    if not path.exists():
        raise FormatError(
            f"missing {CONFIG_NAME}",
            path=path.parent,
            hint="a PEFT adapter directory holds adapter_config.json",
        )
    raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, what=CONFIG_NAME)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("not UTF-8 JSON", path=path) from None
    cfg = strict_json(text, what=CONFIG_NAME, path=path)
    if not isinstance(cfg, dict):
        raise FormatError("expected a JSON object", path=path)
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise AdaptkitError(
            f"unsupported peft_type {peft_type!r}; adaptkit reads LORA adapters",
            path=path,
            key="peft_type",
        )
    validate_document(cfg, "peft-adapter-config", path=path)
    for key, reason in _REFUSED.items():
        if _is_set(cfg.get(key)):
            raise AdaptkitError(
                f"{key}={cfg[key]!r} is not supported: {reason}",
                path=path,
                key=key,
                hint="merge it with PEFT (merge_and_unload, save_pretrained) and use the merged model",
            )
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
        raise AdaptkitError(
            f"init_lora_weights={init!r} rewrote the base model's weights when the adapter was "
            "created; the adapter is not a delta on the original base",
            path=path,
            key="init_lora_weights",
            hint="convert it with PEFT's path_initial_model_for_weight_conversion first",
        )
    for key in ("rank_pattern", "alpha_pattern"):
        for pattern in cfg.get(key) or {}:
            _check_pattern(pattern, path, key)
    return cfg


def _check_pattern(pattern: str, path: Path, key: str) -> None:
    import regex

    try:
        regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise AdaptkitError(f"pattern {pattern!r} is not a valid regex: {exc}", path=path, key=key) from None


def match_pattern(
    patterns: dict[str, Any] | None, module: str, *, key: str = "rank_pattern", path: Path | None = None
) -> str | None:
    """The first pattern key PEFT would pick for ``module`` (or ``None``), each match bounded
    in time (:data:`MATCH_SECONDS`)."""
    import regex

    for pattern in patterns or {}:
        try:
            found = regex.match(rf"(.*\.)?({pattern})$", module, timeout=MATCH_SECONDS)
        except TimeoutError:
            raise AdaptkitError(
                f"pattern {pattern!r} takes longer than {MATCH_SECONDS:g} s to match {module!r} "
                "(catastrophic backtracking); refusing it",
                path=path,
                key=key,
            ) from None
        if found:
            return pattern
    return None


def saved_module_names(cfg: dict[str, Any]) -> list[str]:
    """The names PEFT wraps as saved modules: ``modules_to_save`` plus those its task model adds
    (:data:`TASK_SAVED_MODULES`). PEFT matches them against module paths by plain suffix
    (``path.endswith(name)``), so ``classifier`` also names DistilBERT's ``pre_classifier``."""
    names = list(cfg.get("modules_to_save") or [])
    names += [n for n in TASK_SAVED_MODULES.get(str(cfg.get("task_type")), ()) if n not in names]
    return names


def module_rank_alpha(cfg: dict[str, Any], module: str, path: Path | None = None) -> tuple[int, float]:
    """``(r, alpha)`` PEFT uses for ``module``."""
    rank_key = match_pattern(cfg.get("rank_pattern"), module, key="rank_pattern", path=path)
    alpha_key = match_pattern(cfg.get("alpha_pattern"), module, key="alpha_pattern", path=path)
    r = cfg["rank_pattern"][rank_key] if rank_key is not None else cfg["r"]
    alpha = cfg["alpha_pattern"][alpha_key] if alpha_key is not None else cfg["lora_alpha"]
    return int(r), float(alpha)
