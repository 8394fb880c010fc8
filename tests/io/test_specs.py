import pytest

from adaptkit import save_adapter
from adaptkit.errors import AdaptkitError, FormatError, SchemaError
from adaptkit.io.specs import detect_format, load_spec, read_adapter_yaml, resolve_spec
from adaptkit.plugins import get_registry
from tests.helpers.adapters import make_adapter


def test_adapter_yaml_resolves_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "loras").mkdir()
    save_adapter(make_adapter(), tmp_path / "loras" / "a.safetensors")
    spec = tmp_path / "a.yaml"
    spec.write_text("adapter: loras/a.safetensors\nweight: -0.5\nname: skill-a\n")
    monkeypatch.chdir("/")
    ref = read_adapter_yaml(spec)
    assert ref.path == (tmp_path / "loras" / "a.safetensors").resolve()
    assert (ref.weight, ref.name, ref.spec) == (-0.5, "skill-a", spec)
    assert set(load_spec(spec).targets) == set(make_adapter().targets)


def test_defaults(tmp_path):
    spec = tmp_path / "b.yml"
    spec.write_text("adapter: b.safetensors\n")
    ref = read_adapter_yaml(spec)
    assert (ref.weight, ref.name) == (1.0, "b")


def test_every_schema_problem_reported_at_once(tmp_path):
    spec = tmp_path / "a.yaml"
    # YAML 1.1 traps: `no` becomes False, `1e3` stays a string.
    spec.write_text("adapter: a.safetensors\nweight: 1e3\nname: no\ncolour: blue\n")
    with pytest.raises(SchemaError) as info:
        read_adapter_yaml(spec)
    problems = info.value.problems
    assert len(problems) == 3
    text = " | ".join(problems)
    assert "weight: '1e3' is not of type 'number'" in text
    assert "name: False is not of type 'string'" in text
    assert "'colour' was unexpected" in text
    assert str(spec) in str(info.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [("https://example.com/a.safetensors", "is a URL"), ("~/a.safetensors", "starts with '~'")],
)
def test_suspicious_paths_rejected(tmp_path, value, message):
    spec = tmp_path / "a.yaml"
    spec.write_text(f"adapter: {value!r}\n")
    with pytest.raises(AdaptkitError, match=message):
        read_adapter_yaml(spec)


def test_nul_in_spec_rejected():
    with pytest.raises(AdaptkitError, match="NUL"):
        resolve_spec("a\x00.safetensors")


def test_unrecognised_file_lists_formats(tmp_path):
    junk = tmp_path / "adapter_model.bin"
    junk.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(FormatError, match=r"formats tried: adaptkit.*never loaded"):
        detect_format(junk, get_registry())
    with pytest.raises(FormatError, match="no such file"):
        detect_format(tmp_path / "nope", get_registry())
