"""Names from files never act on the terminal: control characters are shown escaped in every
message and table (one formatter, `adaptkit.cli.output.terminal_safe`), and the PEFT reader
refuses module names that are not dotted paths."""

import json

import pytest
from safetensors.torch import load_file, save_file

from adaptkit import load_spec
from adaptkit.cli.output import terminal_safe
from adaptkit.errors import AdaptkitError
from tests.helpers.models import tiny_llama

HOSTILE = "q\x1b]0;pwned\x07\x1b[2J\r\u202e"


def test_terminal_safe_escapes_controls_and_bidi_overrides_only():
    out = terminal_safe(f"model.{HOSTILE}.x héllo")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in out)
    assert "\\x1b]0;pwned\\x07" in out and "\\r" in out and "\\u202e" in out and "héllo" in out


def _peft_dir(tmp_path, rename):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "p")
    weights = tmp_path / "p" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({rename(k): v for k, v in tensors.items()}, weights)
    return tmp_path / "p"


@pytest.mark.parametrize("bad", ["../../x", "a/b", "model..layers", HOSTILE])
def test_peft_reader_refuses_module_names_that_are_not_dotted_paths(tmp_path, bad):
    path = _peft_dir(tmp_path, lambda k: k.replace("layers.0.self_attn.q_proj", bad))
    with pytest.raises(AdaptkitError, match="is not a dotted module path"):
        load_spec(path)


def test_cli_errors_and_tables_print_names_escaped(tmp_path, run_cli):
    path = _peft_dir(tmp_path, lambda k: k.replace("layers.0.self_attn.q_proj", HOSTILE))
    for args in (["inspect", path], ["convert", path, "--to", "adaptkit", "-o", tmp_path / "o.safetensors"]):
        code, out, err = run_cli(*args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
        assert "\x1b" not in err + out and "\r" not in err and "\\x1b]0;pwned" in err


def test_tables_escape_cells(capsys):
    from adaptkit.cli.output import echo_table

    echo_table(("name", "value"), [(HOSTILE, 1.0)])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b" in out


def test_json_output_escapes_control_characters(capsys):
    from adaptkit.cli.output import echo_json

    echo_json({"name": HOSTILE})
    out = capsys.readouterr().out
    assert "\x1b" not in out and json.loads(out)["name"] == HOSTILE
