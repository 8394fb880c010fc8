"""`adaptkit demo --quick` from a cold cache: skills are really learned, files are written."""

import json

import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    import os

    from adaptkit.cli import main

    tmp = tmp_path_factory.mktemp("demo")
    old = os.environ.get("ADAPTKIT_CACHE")
    os.environ["ADAPTKIT_CACHE"] = str(tmp / "cache")  # cold: the base is pre-trained here
    try:
        code = main(["demo", "--quick", "-o", str(tmp / "out"), "--json"])
    finally:
        if old is None:
            os.environ.pop("ADAPTKIT_CACHE", None)
        else:
            os.environ["ADAPTKIT_CACHE"] = old
    assert code == 0
    return tmp / "out"


def test_each_adapter_learns_its_own_skill(demo):
    acc = json.loads((demo / "results.json").read_text())["accuracy"]
    assert acc["base"]["upper"] == 0.0 and acc["base"]["digits"] == 0.0
    assert acc["A"]["upper"] >= 0.6, acc["A"]
    assert acc["B"]["digits"] >= 0.8, acc["B"]
    # Skills stay apart (an adapter trained on its skill alone at times applies the base's
    # other prefixed transform: a few percent at most).
    assert acc["A"]["digits"] <= 0.05 and acc["B"]["upper"] <= 0.05, acc


def test_tuning_recovers_what_the_static_combinations_lose(demo):
    """The demo's story: independently trained adapters interfere in every static combination;
    tuned per-component weights keep most of both skills (docs/benchmarks.md has the full-mode
    numbers over 3 seeds; quick mode shows the same gap, smaller margins asserted)."""
    results = json.loads((demo / "results.json").read_text())
    acc = results["accuracy"]
    worst = {name: min(a.values()) for name, a in acc.items()}
    static = max(worst[n] for n in ("linear", "cat", "svd", "ties", "dare_ties"))
    assert worst["tuned"] >= static + 0.15, worst
    assert worst["tuned"] >= 0.6 * min(acc["A"]["upper"], acc["B"]["digits"]), worst
    assert results["tune"]["settings"]["granularity"] == "component"
    assert results["best"] == "tuned"


def test_files_and_export(demo):
    for name in (
        "a.yaml",
        "b.yaml",
        "recipe.yaml",
        "summary.md",
        "results.json",
        "adapters/skill_a.safetensors",
        "adapters/skill_b.safetensors",
        "onnx/model.onnx",
        "onnx/genai_config.json",
        "onnx/tokenizer.json",
        "onnx/export-report.json",
    ):
        assert (demo / name).is_file(), name
    results = json.loads((demo / "results.json").read_text())
    assert results["best"] in results["accuracy"]
    # The demo's Llama (head size 16) gets the generation graph: greedy tokens identical.
    parity = results["export"]["parity"]
    assert parity and all(p["tokens_identical"] and p["prefill_max_abs"] < 1e-3 for p in parity)
    assert {"combined/linear.safetensors", "combined/ties.safetensors"} <= {
        str(p.relative_to(demo)) for p in (demo / "combined").iterdir()
    }
    summary = (demo / "summary.md").read_text()
    assert "Exact-match accuracy" in summary and results["best"] in summary


def test_demo_yamls_work_with_the_cli(demo, run_cli, tmp_path):
    code, _, err = run_cli("validate", demo / "a.yaml", demo / "b.yaml", demo / "recipe.yaml")
    assert code == 0, err
    code, _, err = run_cli("combine", demo / "a.yaml", demo / "b.yaml", "-o", tmp_path / "ab.safetensors")
    assert code == 0, err


def test_charts(demo):
    # matplotlib is in the test extra, so the charts are always produced here.
    for name in ("accuracy.png", "update_magnitude.png"):
        assert (demo / name).stat().st_size > 1000


def test_a_rerun_may_replace_its_own_workspace_only(demo, run_cli, tmp_path):
    from adaptkit.demo.run import DemoSettings, train_config
    from adaptkit.training.loop import check_train_outputs

    # The adapters of the earlier run exist; the demo's training passes the output guard.
    for key in ("a", "b"):
        cfg = train_config(demo, key, tmp_path, DemoSettings.for_mode(True))
        assert (demo / "adapters" / f"skill_{key}.safetensors").exists()
        check_train_outputs(cfg)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run_cli("demo", "--quick", "-o", tmp_path / "mine")
    assert code == 2 and "not empty" in err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_generate_streams_text_from_the_export(demo, run_cli):
    """The demo's export has a tokenizer: `generate --prompt` encodes, streams and decodes, and the
    ONNX and PyTorch (+ adapter, unmerged) paths agree token for token."""
    best = json.loads((demo / "results.json").read_text())["best"]
    code, out, err = run_cli(
        "generate", demo / "onnx", "--prompt", "hello=", "--max-new-tokens", "6", "--json"
    )
    assert code == 0, err
    onnx = json.loads(out)
    assert onnx["text"] is not None and len(onnx["output_ids"]) >= 1
    model = json.loads((demo / "onnx" / "export-report.json").read_text())["model"]
    combined = demo / "combined" / f"{best}.safetensors"
    code, out, err = run_cli(
        "generate", model, "-a", combined, "--prompt", "hello=", "--max-new-tokens", "6", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["output_ids"] == onnx["output_ids"]
    code, out, _ = run_cli("generate", demo / "onnx", "--prompt", "hello=", "--max-new-tokens", "3")
    assert code == 0 and out.strip()  # streamed text
