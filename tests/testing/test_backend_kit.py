"""The backend contract kit: every builtin backend passes it, and each check fires on a backend
broken in exactly the way that check guards against."""

import os

import pytest
import torch

from adaptkit import testing
from adaptkit.plugins import get_registry
from adaptkit_lora import LoraBackend


@pytest.mark.parametrize("name", ["lora", "qlora"])
def test_builtin_backends_pass_the_kit(name, tmp_path):
    backend = get_registry().get("backend", name)
    assert {"resume", "ddp", "shard"} <= set(backend.supports)  # so the kit checks every claim
    testing.check_backend(backend, tmp_path)


# --- deliberately broken backends, one flaw each ----------------------------------------


class BaseLeftTrainable(LoraBackend):
    def prepare(self, model, settings, config, log):
        params = super().prepare(model, settings, config, log)
        norm = model.model.norm.weight
        norm.requires_grad_(True)
        return [*params, norm]


class HidesATrainableParameter(LoraBackend):
    def prepare(self, model, settings, config, log):
        params = super().prepare(model, settings, config, log)
        model.model.norm.weight.requires_grad_(True)
        return params


class DropsATarget(LoraBackend):
    def extract(self, model, *, base_name, provenance):
        adapter = super().extract(model, base_name=base_name, provenance=provenance)
        adapter.targets.pop(sorted(adapter.targets)[0])
        return adapter


class ReportsTheWrongScale(LoraBackend):
    def extract(self, model, *, base_name, provenance):
        from adaptkit.lora import LoraPair

        adapter = super().extract(model, base_name=base_name, provenance=provenance)
        adapter.targets = {
            n: LoraPair(A=p.A, B=p.B, alpha=2 * p.alpha, scaling=p.scaling)
            for n, p in adapter.targets.items()
        }
        return adapter


class NeverLearns(LoraBackend):
    def optimizer(self, params, config, log):
        return torch.optim.SGD(params, lr=0.0)


class ExtractsStaleFactors(LoraBackend):
    """Snapshots the adapter at prepare time: the trained factors never reach the file."""

    def prepare(self, model, settings, config, log):
        params = super().prepare(model, settings, config, log)
        self.snapshot = super().extract(model, base_name=None, provenance={})
        return params

    def extract(self, model, *, base_name, provenance):
        return self.snapshot


class UnsavableProvenance(LoraBackend):
    def extract(self, model, *, base_name, provenance):
        adapter = super().extract(model, base_name=base_name, provenance=provenance)
        adapter.provenance["loss"] = float("nan")  # not valid JSON: the manifest refuses it
        return adapter


class HiddenOptimizerState(torch.optim.Optimizer):
    """Plain SGD whose rate decays with a counter kept outside ``state_dict()``."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})
        self.calls = 0

    @torch.no_grad()
    def step(self):
        self.calls += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * 50 / self.calls)


class ForgetsStateOnResume(LoraBackend):
    def optimizer(self, params, config, log):
        return HiddenOptimizerState(params, config.lr)


class ScalesByWorldSize(LoraBackend):
    """Claims DDP and sharding, but its rate depends on the number of processes."""

    def optimizer(self, params, config, log):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return torch.optim.AdamW([{"params": params, "lr_scale": world}], lr=config.lr)


class UndeclaredOptions(LoraBackend):
    options_schema = None


class UnboundedOption(LoraBackend):
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"ratio": {"type": "number", "exclusiveMinimum": 0, "default": 2}},
    }


class AcceptsUnknownOptions(LoraBackend):
    options_schema = {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("backend", "check", "message"),
    [
        (UndeclaredOptions(), "check_options", "declare options_schema"),
        (UnboundedOption(), "check_options", "needs a lower and an upper bound"),
        (AcceptsUnknownOptions(), "check_options", "additionalProperties: false"),
        (BaseLeftTrainable(), "check_prepare", "prepare left base parameters trainable"),
        (HidesATrainableParameter(), "check_prepare", "trainable but not returned by prepare"),
        (DropsATarget(), "check_extract", "extracted targets differ"),
        (DropsATarget(), "check_prepare", "only LoRA parameters may train"),
        (ReportsTheWrongScale(), "check_extract", "attached with alpha/r = 2.5"),
        (NeverLearns(), "check_learns", "took the loss from"),
        (ExtractsStaleFactors(), "check_reload", "reloaded, differs from the trained model"),
        (ReportsTheWrongScale(), "check_reload", "reloaded, differs from the trained model"),
        (UnsavableProvenance(), "check_round_trip", "does not save and load"),
        (ForgetsStateOnResume(), "check_resume", "claims resume"),
    ],
)
def test_each_check_fires_on_its_flaw(backend, check, message, tmp_path):
    fn = getattr(testing, check)
    args = (backend, tmp_path) if check in ("check_round_trip", "check_resume") else (backend,)
    with pytest.raises(AssertionError, match=message):
        fn(*args)


def test_ddp_and_shard_checks_fire_when_processes_disagree(tmp_path):
    with pytest.raises(
        AssertionError, match=r"claims ddp, but 2 processes end .*; claims shard, but 2 processes end"
    ):
        testing.check_processes(ScalesByWorldSize(), tmp_path)


def test_claims_are_only_checked_when_made(tmp_path):
    class NoClaims(ForgetsStateOnResume):
        supports = frozenset()

    testing.check_resume(NoClaims(), tmp_path)  # no claim, nothing to hold it to
    with pytest.raises(AssertionError, match="unknown claims"):

        class Boasts(LoraBackend):
            supports = frozenset({"resume", "teleport"})

        testing.check_backend(Boasts(), tmp_path)
