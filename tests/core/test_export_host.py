"""The export host with exporters registered in-process: flags generated from options_schema
(switches both ways, nullable ones with two flags), the request an exporter receives, the
report, one exporter per export, and the declarations the registry refuses (their plugin alone)."""

import json
import re

import pytest

from adaptkit import save_adapter
from adaptkit.api import hookimpl
from adaptkit.plugins import get_registry, load_registry
from adaptkit.plugins.registry import LOAD_ENV
from tests.helpers.adapters import make_adapter

SEEN = []


class Recorder:
    name = "recorder"
    description = "keeps the request it gets"
    help = "records the request\n  adaptkit export --recorder ..."
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "check": {"type": "boolean", "default": True, "description": "check things"},
            "no_cache": {"type": "boolean", "default": False, "description": "skip the cache"},
            "level": {"type": "integer", "minimum": 1, "maximum": 9, "default": 5, "description": "how hard"},
            "tol": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0,
                "maximum": 1,
                "default": None,
                "description": "tolerance (default: the exporter's)",
            },
        },
    }

    def export(self, request, log):
        SEEN.append(request)
        (request.out_dir / "made.txt").write_text("made")
        return {"made": 1, "ratio": float("nan")}


class Reporter(Recorder):
    name = "reporter"
    options_schema = {"type": "object", "additionalProperties": False, "properties": {}}

    def export(self, request, log):
        return {"model": "mine"}


def _plugin(*exporters):
    class Plugin:
        @hookimpl
        def register_exporters(self, register):
            for e in exporters:
                register(e)

    return Plugin()


@pytest.fixture
def host(tmp_path, monkeypatch):
    """The CLI sees only these exporters (and a model folder and an adapter to export)."""
    from adaptkit.plugins import registry
    from tests.helpers.models import tiny_llama

    def use(*exporters, late=()):
        extra = [("kit", _plugin(*exporters))] + ([("late", _plugin(*late))] if late else [])
        reg = load_registry(env={LOAD_ENV: "native"}, extra=extra)
        monkeypatch.setattr(registry, "_cached", reg)

    SEEN.clear()
    tiny_llama().save_pretrained(tmp_path / "base")
    save_adapter(make_adapter(0), tmp_path / "a.safetensors")
    return use


def test_switches_both_ways_numbers_from_text_and_what_was_given(host, tmp_path, run_cli):
    host(Recorder())
    code, out, err = run_cli(
        "export", "--recorder", "--model", tmp_path / "base", "-a", tmp_path / "a.safetensors",
        "-o", tmp_path / "out", "--no-check", "--no-cache", "--level", "3", "--json",
    )  # fmt: skip
    assert code == 0, err
    (request,) = SEEN
    assert dict(request.options) == {"check": False, "no_cache": True, "level": 3, "tol": None}
    assert request.given == {"check", "no_cache", "level"}
    assert request.flag("check") == "--no-check" and request.flag("no_cache") == "--no-cache"
    assert request.model_dir == (tmp_path / "base") and request.output == tmp_path / "out"
    assert request.out_dir.parent == tmp_path and request.out_dir != request.output
    report = json.loads(out)
    assert report == json.loads((tmp_path / "out" / "export-report.json").read_text())
    assert list(report)[:5] == ["exporter", "model", "model_dir", "adapters", "options"]
    assert report["made"] == 1 and report["ratio"] == "nan"  # strict JSON in the file too
    assert (tmp_path / "out" / "made.txt").read_text() == "made"


def test_defaults_fill_what_was_not_given(host, tmp_path, run_cli):
    host(Recorder())
    code, _, err = run_cli(
        "export", "--exporter", "recorder", "--model", tmp_path / "base", "-o", tmp_path / "out",
        "--tol", "0.25",
    )  # fmt: skip
    assert code == 0, err
    (request,) = SEEN
    assert dict(request.options) == {"check": True, "no_cache": False, "level": 5, "tol": 0.25}
    assert request.given == {"tol"} and request.adapters == []


def test_help_shows_the_exporter_its_paragraph_and_its_options(host, run_cli):
    host(Recorder())
    code, out, _ = run_cli("export", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "--recorder records the request adaptkit export --recorder ..." in text
    assert (
        "--no-check --recorder: check things" in text
        and "--level INT --recorder: how hard; default 5" in text
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--level", "0"], "error: --level: must be an integer >= 1 and <= 9, got '0'"),
        (["--level", "2.5"], "error: --level: must be an integer >= 1 and <= 9, got '2.5'"),
        (["--tol", "inf"], "error: --tol: must be a finite number, got 'inf'"),
        (["--tol", "0"], "error: --tol: must be a number > 0 and <= 1, got '0'"),
    ],
)
def test_bad_values_are_one_line_before_any_work(host, tmp_path, run_cli, extra, words):
    host(Recorder())
    code, _, err = run_cli(
        "export", "--recorder", "--model", tmp_path / "base", "-o", tmp_path / "out", *extra
    )
    assert code == 2 and err == words + "\n" and not SEEN and not (tmp_path / "out").exists()


def test_a_report_setting_a_host_key_is_a_plugin_error(host, tmp_path, run_cli):
    host(Reporter())
    code, _, err = run_cli("export", "--reporter", "--model", tmp_path / "base", "-o", tmp_path / "out")
    assert code == 2 and "exporter 'reporter' sets report key 'model', which the host writes" in err
    assert not (tmp_path / "out").exists()


def _with_options(name, **properties):
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    return type(name.title().replace("-", ""), (Recorder,), {"name": name, "options_schema": schema})()


def _listed(out):
    """The flags on the option lines of `export --help` (not those its paragraphs mention)."""
    options = out.split("\nOptions:\n")[1].splitlines()
    decls = [line.strip().split("  ")[0] for line in options if line.startswith("  -")]
    return {t for decl in decls for t in re.split(r"[\s,/]+", decl) if t.startswith("-")}


SWITCH = {"type": "boolean", "default": False, "description": "d"}
LEVEL = Recorder.options_schema["properties"]["level"]
REFUSED = [
    # incomplete: an unbounded integer (the declaration that used to break every exporter)
    (_with_options("late", level={"type": "integer", "default": 1, "description": "d"}), "needs a lower and"),
    # an option that is a host flag
    (
        _with_options("late", force=SWITCH),
        "option 'force' would be --force, which is a flag of adaptkit export",
    ),
    # an exporter named like a host flag: its selector would be shadowed
    (_with_options("json"), "its selector --json is a flag of adaptkit export itself"),
    (_with_options("force"), "its selector --force is a flag of adaptkit export itself"),
    (_with_options("exporter"), "its selector --exporter is a flag of adaptkit export itself"),
    # a different key with the same flag: no_check defaulting to false is --no-check, which is
    # recorder's flag for check (defaulting to true), as no_verify would be ONNX's --no-verify
    (
        _with_options("late", no_check=SWITCH),
        "option 'no_check' would be --no-check, which is option 'check' of exporter 'recorder' "
        "(plugin 'kit')",
    ),
    # a selector that is another exporter's option flag, and the other way round
    (_with_options("level"), "its selector --level is option 'level' of exporter 'recorder'"),
    (
        _with_options("late", recorder=SWITCH),
        "option 'recorder' would be --recorder, which is the selector of",
    ),
    # one key, two meanings: a switch and a value, a switch both ways, two types, two sets of choices
    (
        _with_options("late", check={**SWITCH, "type": "string", "default": "x"}),
        "option 'check' (--check TEXT) differs",
    ),
    (
        _with_options("late", no_cache={**SWITCH, "default": True}),
        "option 'no_cache' (--no-no-cache) differs",
    ),
    (_with_options("late", level={**LEVEL, "type": "number"}), "option 'level' (--level FLOAT) differs"),
    (
        _with_options("late", level={**LEVEL, "type": "string", "enum": ["a", "b"], "default": "a"}),
        "option 'level' (--level [a|b]) differs from option 'level' of exporter 'recorder' (--level INT)",
    ),
    # two of its own keys with one flag
    (
        _with_options("late", keep={**SWITCH, "type": ["boolean", "null"], "default": None}, no_keep=SWITCH),
        "option 'no_keep' would be --no-keep, which is its own option 'keep'",
    ),
]


@pytest.mark.parametrize(("late", "words"), REFUSED, ids=lambda x: getattr(x, "name", None))
def test_a_declaration_that_cannot_be_flags_fails_its_plugin_alone(host, tmp_path, run_cli, late, words):
    """The exporter registered after the others is refused when its plugin registers, named in
    `adaptkit plugins`; every other exporter keeps its flags and works."""
    host(Recorder(), late=[late])
    code, out, err = run_cli("plugins")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith("late ")]
    assert f"FAILED TO LOAD: exporter {late.name!r} refused: " in row and words in row, row
    assert any(line.split()[:4] == ["kit", "exporter", "recorder", "ok"] for line in out.splitlines())
    code, out, err = run_cli("export", "--help")
    assert code == 0 and not err, err
    assert {"--recorder", "--no-check", "--level", "--tol"} <= _listed(out)
    assert not {"--late", "--no-no-cache", "--keep", "--no-keep"} & _listed(out)
    assert get_registry().names("exporter") == ["recorder"]
    code, _, err = run_cli(
        "export", "--recorder", "--model", tmp_path / "base", "-o", tmp_path / "out", "--level", "3"
    )
    assert code == 0, err
    assert dict(SEEN[0].options)["level"] == 3


def test_a_refused_exporter_is_unknown_with_the_reason_one_command_away(host, tmp_path, run_cli):
    host(Recorder(), late=[_with_options("late", force=SWITCH)])
    code, _, err = run_cli(
        "export", "--exporter", "late", "--model", tmp_path / "base", "-o", tmp_path / "out"
    )
    assert code == 2 and not (tmp_path / "out").exists()
    assert err == (
        "error: unknown exporter 'late'; valid: recorder "
        "(plugin 'late' failed to load; `adaptkit plugins` says why)\n"
    )


def test_a_refused_third_party_exporter_leaves_merged_working(tmp_path, run_cli, monkeypatch):
    """The real builtins beside a broken third party: `export --merged` and `--help` work."""
    from adaptkit.plugins import registry

    reg = load_registry(
        env={LOAD_ENV: "native,bake"},
        extra=[
            (
                "late",
                _plugin(_with_options("late", level={"type": "integer", "default": 1, "description": "d"})),
            )
        ],
    )
    monkeypatch.setattr(registry, "_cached", reg)
    from adaptkit import nn as lora
    from tests.helpers.models import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "base")
    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(targets=["q_proj"], rank=2, alpha=2))
    save_adapter(lora.extract(model), tmp_path / "a.safetensors")
    code, out, err = run_cli("export", "--help")
    assert code == 0 and "--merge-base" in _listed(out) and "--late" not in _listed(out), err
    code, _, err = run_cli(
        "export",
        "--merged",
        "--model",
        tmp_path / "base",
        "-a",
        tmp_path / "a.safetensors",
        "-o",
        tmp_path / "out",
    )
    assert code == 0 and (tmp_path / "out" / "export-report.json").is_file(), err
    assert "late" in reg.plugins and "needs a lower and an upper bound" in reg.plugins["late"].error


def test_exporters_share_a_key_of_one_kind_each_checking_its_own_bounds(host, tmp_path, run_cli):
    """A shared key is one flag with one metavar; help lists each exporter's description and
    default; each exporter's own property checks the value."""
    narrow = _with_options(
        "narrow", level={**LEVEL, "maximum": 3, "default": 2, "description": "narrow level"}
    )
    host(Recorder(), narrow)
    code, out, _ = run_cli("export", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "--level INT --narrow: narrow level; default 2; --recorder: how hard; default 5" in text
    base = ("--model", tmp_path / "base", "-o", tmp_path / "out", "--level", "5")
    code, _, err = run_cli("export", "--narrow", *base)
    assert code == 2 and err == "error: --level: must be an integer >= 1 and <= 3, got '5'\n"
    code, _, err = run_cli("export", "--recorder", *base)
    assert code == 0, err


TWO_WAY = {
    "type": ["boolean", "null"],
    "default": None,
    "description": "keep it (default: the exporter's choice)",
}


@pytest.mark.parametrize(
    ("extra", "value", "spelt"),
    [([], None, "--keep"), (["--keep"], True, "--keep"), (["--no-keep"], False, "--no-keep")],
)
def test_a_nullable_switch_goes_both_ways(host, tmp_path, run_cli, extra, value, spelt):
    host(_with_options("keeper", keep=TWO_WAY))
    code, _, err = run_cli("export", "--keeper", "--model", tmp_path / "base", "-o", tmp_path / "out", *extra)
    assert code == 0, err
    (request,) = SEEN
    assert request.options["keep"] is value and request.given == set(extra and ["keep"])
    assert request.flag("keep") == spelt


def test_a_nullable_switch_shows_both_flags(host, run_cli):
    host(_with_options("keeper", keep=TWO_WAY))
    code, out, _ = run_cli("export", "--help")
    assert code == 0
    assert "--keep / --no-keep --keeper: keep it (default: the exporter's choice)" in " ".join(out.split())


@pytest.mark.parametrize(
    ("picks", "words"),
    [
        (["--recorder", "--keeper"], "--keeper and --recorder"),
        (["--recorder", "--exporter", "keeper"], "--recorder and --exporter keeper"),
        (["--exporter", "recorder", "--exporter", "keeper"], "--exporter recorder and --exporter keeper"),
        (["--keeper", "--exporter", "recorder", "--exporter", "keeper"], "--keeper and --exporter recorder"),
    ],
    ids=["two-selectors", "selector-and-exporter", "two-exporter", "three"],
)
def test_two_exporters_picked_is_one_error_not_the_last_one(host, tmp_path, run_cli, picks, words):
    host(Recorder(), _with_options("keeper", keep=TWO_WAY))
    code, _, err = run_cli("export", *picks, "--model", tmp_path / "base", "-o", tmp_path / "out")
    assert code == 2 and not SEEN and not (tmp_path / "out").exists()
    assert err == f"error: {words} each pick an exporter; an export has one (give one of them)\n"


def test_one_exporter_picked_twice_is_one_pick(host, tmp_path, run_cli):
    host(Recorder())
    code, _, err = run_cli(
        "export", "--recorder", "--exporter", "recorder", "--model", tmp_path / "base", "-o", tmp_path / "out"
    )
    assert code == 0 and len(SEEN) == 1, err


class _Reports(Recorder):
    name = "reports"
    options_schema = {"type": "object", "additionalProperties": False, "properties": {}}
    produced = {}

    def export(self, request, log):
        (request.out_dir / "made.txt").write_text("made")
        return self.produced


def _value(kind, tmp_path):
    import numpy as np
    import torch

    return {
        "path": tmp_path / "made.txt",
        "numpy": np.float32(0.5),
        "torch": torch.tensor(0.5),
        "set": {1, 2},
    }[kind]


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("path", "report['files'][0] is PosixPath"),
        ("numpy", "report['files'][0] is float32"),
        ("torch", "report['files'][0] is Tensor"),
        ("set", "report['files'][0] is set"),
    ],
)
def test_a_report_value_that_is_not_json_is_the_exporter_s_bug_in_one_line(
    host, tmp_path, run_cli, monkeypatch, kind, words
):
    monkeypatch.setattr(_Reports, "produced", {"files": [_value(kind, tmp_path)]})
    host(_Reports())
    code, out, err = run_cli(
        "export", "--reports", "--model", tmp_path / "base", "-o", tmp_path / "out", "--json"
    )
    assert code == 2 and not out and not (tmp_path / "out").exists()
    assert (
        err.startswith(f"error: exporter 'reports' returned a report whose {words}") and err.count("\n") == 1
    ), err
    assert {p.name for p in tmp_path.iterdir()} == {"base", "a.safetensors"}  # no scratch left
