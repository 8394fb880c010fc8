"""The LoRA+ backend: adaptkit's backend contract kit, the learning-rate split, its option."""

import pytest
import torch
from adaptkit_loraplus import LoraPlusBackend

from adaptkit.api import AdaptkitError
from adaptkit.api.nn import LoraSettings
from adaptkit.api.training import TrainConfig, run_training
from adaptkit.testing import check_backend, counting_records, tiny_causal_lm

#: 30 steps of 8 counting records at lr 1e-3, rank 8 on every linear layer.
SETTINGS = dict(backend="loraplus", lr=1e-3, max_steps=30, batch_size=8, seq_len=32, seed=0)


def config(**overrides):
    lora = LoraSettings(targets="all-linear", rank=8, alpha=8)
    return TrainConfig(**{"lora": lora, **SETTINGS, **overrides})


def train(backend, cfg):
    return run_training(
        cfg, model=tiny_causal_lm(), records=counting_records(), backend=backend, progress=False, log=print
    )


def test_contract(tmp_path):
    check_backend(LoraPlusBackend(), tmp_path)


def test_b_factors_get_ratio_times_the_rate_through_the_schedule():
    backend = LoraPlusBackend()
    cfg = config(options={"ratio": 4}, warmup_steps=2, lr_schedule="linear", max_steps=4)
    model = tiny_causal_lm()
    params = backend.prepare(model, cfg.lora, cfg, lambda m: None)
    opt = backend.optimizer(params, cfg, lambda m: None)
    a_group, b_group = opt.param_groups
    assert b_group["lr"] == pytest.approx(4 * a_group["lr"])
    b_ids = {id(p) for p in b_group["params"]}
    named = dict(model.named_parameters())
    assert {n.rsplit(".", 1)[-1] for n, p in named.items() if id(p) in b_ids} == {"lora_B"}
    assert len(a_group["params"]) == len(b_group["params"]) == 14
    # The trainer's schedule keeps the ratio at every step (warm-up, then linear decay).
    result = run_training(
        cfg, model=tiny_causal_lm(), records=counting_records(), backend=backend, progress=False, log=print
    )
    assert result.steps == 4


BAD_RATIOS = ["0", "-2", "nan", "inf", "-inf", "1e999", "fast", 0, -2.5, 1e308, "1e308", 2048, True]


@pytest.mark.parametrize("ratio", BAD_RATIOS)
def test_bad_ratio_is_refused_before_anything_is_attached(ratio):
    model = tiny_causal_lm()
    cfg = config(options={"ratio": ratio})
    with pytest.raises(AdaptkitError, match="loraplus option ratio: must be"):
        LoraPlusBackend().prepare(model, cfg.lora, cfg, print)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("ratio", ["nan", 1e308, "0"])
def test_bad_ratio_is_refused_by_the_trainer_before_the_model_is_touched(ratio):
    model = tiny_causal_lm()
    cfg = config(options={"ratio": ratio})
    with pytest.raises(AdaptkitError, match="loraplus option ratio: must be"):
        run_training(cfg, model=model, records=counting_records(), backend=LoraPlusBackend(), progress=False)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("ratio", "value"), [("16", 16.0), ("1e3", 1000.0), (2, 2.0), (0.5, 0.5)])
def test_good_ratio_text_and_numbers(ratio, value):
    assert LoraPlusBackend().ratio(config(options={"ratio": ratio})) == value


def test_unknown_option_is_refused():
    cfg = config(options={"ration": 8})
    with pytest.raises(AdaptkitError, match="unknown loraplus option 'ration'; valid: ratio"):
        LoraPlusBackend().prepare(tiny_causal_lm(), cfg.lora, cfg, print)


def test_reaches_a_lower_loss_than_plain_lora_at_the_same_budget():
    from adaptkit_lora import LoraBackend

    plus = train(LoraPlusBackend(), config())
    plain = train(LoraBackend(), config(backend="lora"))
    assert plus.final_loss < plain.final_loss, (plus.final_loss, plain.final_loss)
    # Same start: the same seed gives the same initial factors and data order.
    assert plus.initial_loss == pytest.approx(plain.initial_loss, rel=1e-6)
    assert torch.isfinite(torch.tensor(plus.losses)).all()
