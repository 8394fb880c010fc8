"""The exporter contract kit (adaptkit.testing.check_exporter) over both builtin exporters, and
each of its checks failing on an exporter broken in exactly its way."""

import pytest

from adaptkit.testing import check_atomic, check_declared, check_exporter, check_report


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
        (HostFlag(), "would be --json, a flag the host owns"),
    ],
    ids=["description", "bounds", "open", "host-flag"],
)
def test_check_declared_fails_on_an_incomplete_declaration(exporter, words):
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
