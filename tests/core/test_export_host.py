"""The export host with exporters registered in-process: flags generated from options_schema
(switches both ways), the request an exporter receives, the report, and the declarations the
host refuses."""

import json

import pytest

from adaptkit import save_adapter
from adaptkit.api import hookimpl
from adaptkit.plugins import load_registry
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

    def use(*exporters):
        reg = load_registry(env={LOAD_ENV: "native"}, extra=[("kit", _plugin(*exporters))])
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
    return type(name.title(), (Recorder,), {"name": name, "options_schema": schema})()


SWITCH = {"type": "boolean", "default": False, "description": "d"}
CLASHES = [
    (
        [
            _with_options("one", fast=SWITCH),
            _with_options("two", fast={**SWITCH, "type": "string", "default": "x"}),
        ],
        "option 'fast' (--fast) clashes with the same key",
    ),
    ([_with_options("one", force=SWITCH)], "would be --force"),
    (
        [_with_options("one", level={"type": "integer", "default": 1, "description": "d"})],
        "needs a lower and",
    ),
]


@pytest.mark.parametrize(("exporters", "words"), CLASHES, ids=["clash", "host-flag", "unbounded"])
def test_declarations_the_host_cannot_turn_into_flags_name_the_plugin(host, run_cli, exporters, words):
    host(*exporters)
    code, _, err = run_cli("export", "--help")
    assert code == 2 and err.startswith("error: plugin 'kit'") and words in err, err
