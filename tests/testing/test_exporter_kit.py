"""The exporter contract kit (adaptkit.testing.check_exporter) over both builtin exporters, and
each of its checks failing on an exporter broken in exactly its way."""

import pytest

from adaptkit.testing import (
    check_atomic,
    check_declared,
    check_exporter,
    check_help,
    check_refusals,
    check_report,
)
from adaptkit.testing.exporters import run_export_cli


def test_bake_exporter_contract(tmp_path):
    from adaptkit_bake.exporter import BakeExporter

    check_exporter(BakeExporter(), tmp_path, foreign={"--opset": "18", "--no-verify": None})


def test_onnx_exporter_contract_on_the_logits_graph(tmp_path):
    """The cheapest real ONNX path: the logits-only graph of the kit's tiny Llama, verified on
    logits. The generation graph (model builder) is covered by tests/plugins_builtin/adaptkit_onnx."""
    from adaptkit_onnx.exporter import OnnxExporter

    check_exporter(OnnxExporter(), tmp_path, args=("--graph", "logits"), foreign={"--merge-base": "original"})


# --- each check fails on an exporter broken in its way ------------------------------------------

NONE = {"type": "object", "additionalProperties": False, "properties": {}}


class Lists:
    """A tiny working exporter: writes the adapters' names."""

    name = "lists"
    description = "the adapters' names, one per line"
    options_schema = NONE

    def export(self, request, log):
        (request.out_dir / "names.txt").write_text("".join(a.name + "\n" for a in request.adapters))
        return {"count": len(request.adapters)}


class Undescribed(Lists):
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"level": {"type": "integer", "minimum": 0, "maximum": 9, "default": 1}},
    }


class Unbounded(Lists):
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"scale": {"type": "number", "minimum": 0, "default": 1.0, "description": "scale"}},
    }


class OpenSchema(Lists):
    options_schema = {"type": "object", "properties": {}}


class HostFlag(Lists):
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"json": {"type": "boolean", "default": False, "description": "as JSON"}},
    }


class NamedJson(Lists):
    name = "json"  # its selector would be --json, the host's flag


class TakesOnnxFlag(Lists):
    """Declares `no_verify` (a boolean defaulting to false: --no-verify), ONNX's flag for `verify`."""

    name = "shadow"
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"no_verify": {"type": "boolean", "default": False, "description": "skip it"}},
    }


class MergedWithIntAgreement(Lists):
    """Takes the name `merged` (the kit lets it stand in for the builtin) and declares ONNX's
    `min_agreement` as an integer: the registry refuses it, yet `--merged` and `--min-agreement`
    both still appear in `export --help` (ONNX's paragraph and option line)."""

    name = "merged"
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "min_agreement": {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "default": 90,
                "description": "percent",
            },
        },
    }


class Switches(Lists):
    """A working exporter with every kind of option: a switch, a two-way switch, free text, a
    choice and a bounded integer."""

    name = "switches"
    options_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "fast": {"type": "boolean", "default": False, "description": "go fast"},
            "keep": {
                "type": ["boolean", "null"],
                "default": None,
                "description": "keep it (default: chosen)",
            },
            "label": {"type": "string", "default": "", "description": "a label written with the names"},
            "mode": {
                "type": "string",
                "enum": ["plain", "fancy"],
                "default": "plain",
                "description": "style",
            },
            "level": {"type": "integer", "minimum": 0, "maximum": 9, "default": 1, "description": "how much"},
        },
    }


class WritesBeside(Lists):
    """Writes a file beside the output, where no failure cleans it up."""

    def export(self, request, log):
        (request.output.parent / "stray.txt").write_text("outside out_dir")
        return super().export(request, log)


class WritesIntoOutput(Lists):
    """Writes straight into the output folder instead of the folder the host publishes."""

    def export(self, request, log):
        request.output.mkdir(parents=True, exist_ok=True)
        (request.output / "names.txt").write_text("not atomic")
        return super().export(request, log)


class WritesReport(Lists):
    """Writes the host's report file itself."""

    def export(self, request, log):
        (request.out_dir / "export-report.json").write_text("{}")
        return super().export(request, log)


def test_a_working_exporter_passes(tmp_path):
    check_exporter(Lists(), tmp_path)


@pytest.mark.parametrize(
    ("exporter", "words"),
    [
        (Undescribed(), "option 'level' needs a description"),
        (Unbounded(), "numeric option 'scale' needs a lower and an upper bound"),
        (OpenSchema(), "additionalProperties: false"),
        (HostFlag(), "option 'json' would be --json, which is a flag of adaptkit export itself"),
        (NamedJson(), "its selector --json is a flag of adaptkit export itself"),
        (
            TakesOnnxFlag(),
            "option 'no_verify' would be --no-verify, which is option 'verify' of exporter 'onnx'",
        ),
        (MergedWithIntAgreement(), r"option 'min_agreement' \(--min-agreement INT\) differs from option"),
    ],
    ids=[
        "description",
        "bounds",
        "open",
        "host-flag",
        "host-flag-name",
        "another-exporter-s-flag",
        "shared-key",
    ],
)
def test_check_declared_fails_on_a_declaration_the_registry_refuses(exporter, words):
    with pytest.raises(AssertionError, match=words):
        check_declared(exporter)


@pytest.mark.parametrize(
    ("exporter", "words"),
    [(WritesBeside(), r"left \['stray.txt'\]"), (WritesIntoOutput(), r"left \['out'\]")],
    ids=["beside", "into-output"],
)
def test_check_atomic_fails_on_writes_outside_out_dir(tmp_path, exporter, words):
    with pytest.raises(AssertionError, match=words):
        check_atomic(exporter, tmp_path)


def test_check_report_fails_on_an_exporter_writing_the_report(tmp_path):
    with pytest.raises(AssertionError, match=r"wrote export-report\.json, which the host writes"):
        check_report(WritesReport(), tmp_path)


def test_help_and_refusal_checks_pass_on_every_kind_of_option(tmp_path):
    """The refusals include a value given to a switch (--fast=true, --keep=true, --no-keep=true),
    a choice in other letter case (PLAIN) and a text option without its value."""
    check_declared(Switches())
    check_help(Switches(), tmp_path)
    check_refusals(Switches(), tmp_path)


def test_check_help_counts_option_lines_not_mentions(tmp_path):
    """`--merged` and `--min-agreement` are in the help text (ONNX's paragraph and option line),
    but the registry refused this `merged`: no option line is its own."""
    (result,) = run_export_cli(MergedWithIntAgreement(), [{"argv": ["export", "--help"]}], tmp_path / "probe")
    assert result["code"] == 0 and result["refused"]
    assert {"--merged", "--min-agreement"} <= set(result["out"].split())  # mentioned, as text
    with pytest.raises(
        AssertionError, match="no option line for --merged, --min-agreement as an option of --merged"
    ):
        check_help(MergedWithIntAgreement(), tmp_path)


def test_check_refusals_fails_on_an_exporter_whose_flags_are_another_s(tmp_path):
    """`--no-verify=true` is refused, but as ONNX's switch: this exporter never registered."""
    with pytest.raises(
        AssertionError, match="refused to register the exporter: exporter 'shadow' refused: option"
    ):
        check_refusals(TakesOnnxFlag(), tmp_path)
