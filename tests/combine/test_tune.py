"""Tuned combination weights (`combine --tune`): exact folding, determinism, a held-out split
that tuning never sees, the CLI and recipe paths, and one-line errors for bad inputs."""

import json

import pytest
import torch

from adaptkit import WeightedAdapter, load_adapter, save_adapter
from adaptkit.combine import combine
from adaptkit.combine.tune import TuneResult, TuneSettings, fold, group_of, split_set, tune_weights
from tests.helpers.adapters import token_records, trained_like_adapter
from tests.helpers.models import tiny_llama


def _sets(seed=0):
    return [
        split_set("one", token_records(seed), 0.25, 0),
        split_set("two", token_records(seed + 1), 0.25, 0),
    ]


def _inputs():
    return [
        WeightedAdapter(trained_like_adapter(1), 1.0, "a"),
        WeightedAdapter(trained_like_adapter(2, targets=("q_proj", "o_proj"), rank=2), 0.5, "b"),
    ]


def test_folded_output_equals_the_tuned_weights_applied_unfolded():
    inputs = _inputs()
    targets = sorted({t for i in inputs for t in i.adapter.targets})
    groups = sorted({group_of(t, "layer") for t in targets})
    g = torch.Generator().manual_seed(7)
    weights = {grp: torch.randn(len(inputs), generator=g).tolist() for grp in groups}
    result = TuneResult(groups=groups, names=["a", "b"], weights=weights)
    folded = fold(inputs, result, "layer")
    assert [(f.weight, f.name) for f in folded] == [(i.weight, i.name) for i in inputs]
    out = combine(folded, "cat").adapter
    for target in targets:
        want = torch.zeros_like(
            next(
                i.adapter.targets[target].delta(torch.float64) for i in inputs if target in i.adapter.targets
            )
        )
        for i, item in enumerate(inputs):
            if target in item.adapter.targets:
                alpha = weights[group_of(target, "layer")][i]
                want += alpha * item.weight * item.adapter.targets[target].delta(torch.float64)
        got = out.targets[target].delta(torch.float64)
        assert float((got - want).norm() / want.norm()) < 1e-6, target


def test_per_component_weights_fold_exactly_column_by_column():
    """Granularity ``component``: ``ΔW_t = Σᵢ Σⱼ αᵢ,t,j wᵢ sᵢ bᵢ,t,j aᵢ,t,jᵀ`` against float64, for
    inputs of different ranks at a shared target, and the layer tuning runs computes that sum."""
    from adaptkit import nn as lora
    from adaptkit.combine.tune import _groups

    inputs = _inputs()
    targets = sorted({t for i in inputs for t in i.adapter.targets})
    groups = _groups(inputs, targets, "component")
    q = "model.layers.0.self_attn.q_proj"  # rank 4 in a, rank 2 in b: four groups
    assert [g for g in groups if g.startswith(q + "#")] == [f"{q}#{j}" for j in range(4)]
    g = torch.Generator().manual_seed(7)
    weights = {grp: torch.randn(len(inputs), generator=g).tolist() for grp in groups}
    result = TuneResult(groups=groups, names=["a", "b"], weights=weights)
    out = combine(fold(inputs, result, "component"), "cat").adapter
    model = tiny_llama().double()
    index = {grp: j for j, grp in enumerate(groups)}
    first = {t: index[f"{t}#0"] for t in targets}
    alpha = torch.tensor([[weights[grp][i] for grp in groups] for i in range(2)], dtype=torch.float64)
    layers = lora.attach_mixture(model, inputs, alpha, first, per_component=True)
    for target in targets:
        want = torch.zeros_like(
            next(
                i.adapter.targets[target].delta(torch.float64) for i in inputs if target in i.adapter.targets
            )
        )
        x = torch.randn(3, want.shape[1], dtype=torch.float64, generator=g)
        for i, item in enumerate(inputs):
            if target in item.adapter.targets:
                p = item.adapter.targets[target]
                col = torch.tensor([weights[group_of(target, "component", j)][i] for j in range(p.rank)])
                want += item.weight * p.scale * (p.B.double() * col.double()) @ p.A.double()
        got = out.targets[target].delta(torch.float64)
        assert float((got - want).norm() / want.norm()) < 1e-6, target
        layer = model.get_submodule(target)
        with torch.no_grad():
            applied = layer(x) - layer.base(x)
        expected = x @ want.T  # the mixture layer computes in float32
        assert float((applied - expected).norm() / expected.norm()) < 1e-5, target
    assert layers == targets
    lora.detach(model)
    assert not lora.lora_layers(model, lora.LoraLayer)


def test_tuning_is_deterministic_and_never_sees_the_held_out_part():
    settings = TuneSettings(steps=8, batch_size=4, seed=3)
    first = tune_weights(tiny_llama(), _inputs(), _sets(), settings, progress=False)
    again = tune_weights(tiny_llama(), _inputs(), _sets(), settings, progress=False)
    assert first.weights == again.weights and first.trace == again.trace
    # Replace every held-out record with something else: tuning must not change at all.
    altered = _sets()
    for s in altered:
        s.held_out = [[5] * 10 for _ in s.held_out]
    other = tune_weights(tiny_llama(), _inputs(), altered, settings, progress=False)
    assert other.weights == first.weights
    assert first.groups == ["layer 0", "layer 1"]
    assert any(abs(v - 1.0) > 1e-3 for ws in first.weights.values() for v in ws)  # it moved


@pytest.mark.parametrize("method", ["gradient", "search"])
def test_tuning_lowers_its_objective(method):
    settings = TuneSettings(steps=25, batch_size=16, method=method, lr=0.1, seed=0)
    result = tune_weights(tiny_llama(), _inputs(), _sets(), settings, progress=False)
    assert result.trace[-1] < result.trace[0], result.trace
    if method == "search":
        assert all(b <= a for a, b in zip(result.trace, result.trace[1:], strict=False))


def _write(path, records):
    path.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in records))
    return path


@pytest.fixture
def workspace(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    a = save_adapter(trained_like_adapter(1), tmp_path / "a.safetensors")
    b = save_adapter(
        trained_like_adapter(2, targets=("q_proj", "o_proj"), rank=2), tmp_path / "b.safetensors"
    )
    one = _write(tmp_path / "one.jsonl", token_records(0))
    two = _write(tmp_path / "two.jsonl", token_records(1))
    return tmp_path, a, b, one, two


def test_cli_tunes_reports_held_out_losses_and_records_provenance(workspace, run_cli):
    tmp, a, b, one, two = workspace
    code, out, err = run_cli(
        "combine", a, b, "--tune", one, "--tune", two, "--model", tmp / "base", "--tune-steps", "10",
        "-o", tmp / "t.safetensors", "--plot", tmp / "alpha.png", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)["tune"]
    assert set(summary["held_out_loss_before"]) == {"one", "two"} == set(summary["held_out_loss_after"])
    assert summary["groups"] == ["layer 0", "layer 1"] and summary["adapters"] == ["a", "b"]
    assert (tmp / "alpha.png").read_bytes()[:4] == b"\x89PNG"
    record = load_adapter(tmp / "t.safetensors").provenance["tune"]
    from adaptkit.combine import file_sha256

    assert [s["sha256"] for s in record["sets"]] == [file_sha256(one), file_sha256(two)]
    assert record["settings"]["objective"] == "mean" and record["weights"] == summary["weights"]
    assert all(s["held_out_records"] == 3 and s["tune_records"] == 9 for s in record["sets"])


@pytest.mark.parametrize("granularity", ["target", "component"])
def test_single_set_single_adapter_keeps_the_adapter_structure(workspace, run_cli, granularity):
    tmp, a, _, one, _ = workspace
    code, out, err = run_cli(
        "combine", a, "--tune", one, "--model", tmp / "base", "--tune-steps", "5", "-s", "cat",
        "--tune-granularity", granularity, "-o", tmp / "t.safetensors",
    )  # fmt: skip
    assert code == 0, err
    got, want = load_adapter(tmp / "t.safetensors"), load_adapter(a)
    assert set(got.targets) == set(want.targets)
    assert all(got.targets[t].rank == want.targets[t].rank for t in want.targets)
    weights = got.provenance["tune"]["weights"]
    groups = {group_of(t, granularity, j) for t, p in want.targets.items() for j in range(p.rank)}
    assert set(weights) == groups and all(len(w) == 1 for w in weights.values())
    assert any(abs(w[0] - 1.0) > 1e-4 for w in weights.values())  # tuning moved them
    # The printed table: one row per target (per component: a summary of its weights).
    printed = [line.split()[0] for line in out.splitlines()]
    assert all(t in printed for t in want.targets) and not any("#" in word for word in printed)


def test_recipe_tune_block(workspace, run_cli):
    tmp = workspace[0]
    (tmp / "recipe.yaml").write_text(
        "adapters: [a.safetensors, b.safetensors]\nstrategy: linear\noutput: r.safetensors\n"
        "tune:\n  sets: [one.jsonl, two.jsonl]\n  model: base\n  steps: 5\n  objective: max\n"
        "  granularity: adapter\n"
    )
    code, out, err = run_cli("combine", tmp / "recipe.yaml", "--json")
    assert code == 0, err
    tuned = json.loads(out)["tune"]
    assert tuned["groups"] == ["all"] and tuned["settings"]["objective"] == "max"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tune", "ONE"], "--tune needs --model"),
        (["--tune", "EMPTY", "--model", "BASE"], "empty.jsonl: no training records"),
        (["--tune", "WIDE", "--model", "BASE"], "outside the vocabulary"),
        (["--tune-steps", "5"], "tuning options need evaluation sets"),
        (["--plot", "x.png"], "--plot draws the tuned weights; it needs --tune"),
        (["--tune", "SHORT", "--model", "BASE"], "tuning needs at least 2"),
    ],
)
def test_bad_tuning_inputs_are_one_line_errors(workspace, run_cli, extra, message):
    tmp, a, b, one, _ = workspace
    files = {
        "ONE": one,
        "BASE": tmp / "base",
        "EMPTY": _write(tmp / "empty.jsonl", []),
        "WIDE": _write(tmp / "wide.jsonl", [[5, 6, 7, 999], [5, 6, 7]]),
        "SHORT": _write(tmp / "short.jsonl", [[5, 6, 7]]),
    }
    args = [str(files.get(x, x)) for x in extra]
    code, _, err = run_cli("combine", a, b, *args, "-o", tmp / "x.safetensors")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and not (tmp / "x.safetensors").exists()


def test_tuning_on_a_4bit_base_through_the_qlora_loader(workspace, run_cli):
    tmp, a, b, one, two = workspace
    code, out, err = run_cli(
        "combine", a, b, "--tune", one, "--tune", two, "--model", tmp / "base", "--tune-steps", "5",
        "--tune-quantize", "-o", tmp / "q.safetensors", "--json",
    )  # fmt: skip
    assert code == 0, err
    tuned = json.loads(out)["tune"]
    assert tuned["quantized_base"] is True
    assert all(v == v and v < 100 for v in tuned["held_out_loss_after"].values())  # finite losses


def test_heat_map_of_hundreds_of_groups_stays_a_readable_size(tmp_path):
    from PIL import Image

    from adaptkit.combine.tune import heat_map

    groups = [f"t{k}#{j}" for k in range(28) for j in range(8)]  # the demo's 224 components
    result = TuneResult(groups=groups, names=["a", "b"], weights={g: [1.0, 0.5] for g in groups})
    heat_map(result, tmp_path / "alpha.png")
    width, _ = Image.open(tmp_path / "alpha.png").size
    assert width <= 30 * 120


def test_combine_never_imports_the_training_loop():
    """Tuning trains through training's public pieces (adaptkit.training) and nn's mixture
    layers; the trainer's own loop is no part of combine, at module level or in a function."""
    import ast

    from tests.helpers import REPO

    def imported(path):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)

    found = [
        (str(path.relative_to(REPO)), name)
        for path in sorted((REPO / "adaptkit" / "combine").rglob("*.py"))
        for name in imported(path)
        if name == "adaptkit.training.loop" or name.startswith("adaptkit.training.loop.")
    ]
    assert not found, found
