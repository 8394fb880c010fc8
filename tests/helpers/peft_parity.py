"""Parity with PEFT as a user meets it: a published adapter loaded by PEFT *unmerged* is the truth;
what adaptkit exports must compute the same outputs, and the adapter must change them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch


def train_like(peft_model, seed: int = 1, scale: float = 0.1) -> None:
    """Move every trainable tensor (factors, magnitudes, saved modules, biases, token rows) off its
    initial value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * scale)


def make_published(base, folder: Path, *, seed: int = 1, scale: float = 0.1, config_edits=None, **config):
    """Save a PEFT adapter of ``base`` (a copy) as a user would publish it: ``LoraConfig(**config)``
    with every trainable tensor moved (:func:`train_like`), then ``config_edits`` written into
    its ``adapter_config.json`` (e.g. ``{"modules_to_save": None}`` as published configs say)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(**config))
    train_like(model, seed, scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about saving embedding layers it saves anyway
        model.save_pretrained(folder)
    if config_edits:
        path = Path(folder) / "adapter_config.json"
        cfg = json.loads(path.read_text())
        cfg.update(config_edits)
        path.write_text(json.dumps(cfg))
    return Path(folder)


def outputs(model, inputs: dict) -> torch.Tensor:
    """The model's first output head(s) as one float64 tensor (logits, or QA start and end)."""
    with torch.no_grad():
        out = model.eval()(**inputs)
    if getattr(out, "logits", None) is not None:
        return out.logits.double()
    return torch.stack([out.start_logits, out.end_logits]).double()


def peft_outputs(cls, base_dir: Path, adapter_dir: Path, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(PEFT unmerged, base)`` outputs of ``adapter_dir`` on the base saved in ``base_dir``."""
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(cls.from_pretrained(base_dir), adapter_dir)
    return outputs(model, inputs), outputs(cls.from_pretrained(base_dir), inputs)


def assert_export_matches_peft(
    run_cli, cls, base_dir: Path, adapter_dir: Path, out: Path, inputs: dict, *, atol: float = 1e-5, args=()
) -> dict:
    """``export --merged`` of ``adapter_dir`` loads with ``cls`` and computes PEFT's unmerged
    outputs within ``atol``, and the adapter moved them by more than 100·``atol``. Returns the
    export report."""
    want, base = peft_outputs(cls, base_dir, adapter_dir, inputs)
    code, _, err = run_cli("export", "--merged", "--model", base_dir, "-a", adapter_dir, "-o", out, *args)
    assert code == 0, err
    got = outputs(cls.from_pretrained(out), inputs)
    gap = float((got - want).abs().max())
    assert gap <= atol, f"export differs from PEFT unmerged by {gap:.3g}"
    effect = float((want - base).abs().max())
    assert effect > 100 * atol, f"the adapter barely changes the outputs ({effect:.3g})"
    return json.loads((out / "export-report.json").read_text())
