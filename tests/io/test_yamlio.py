import pytest

from adaptkit.errors import YamlError
from adaptkit.io.yamlio import MAX_BYTES, MAX_DEPTH, load_yaml_file, loads_yaml


def test_plain_mapping_loads():
    assert loads_yaml("adapter: a.safetensors\nweight: 0.5\n") == {
        "adapter": "a.safetensors",
        "weight": 0.5,
    }


def test_duplicate_keys_rejected_with_lines():
    with pytest.raises(YamlError, match=r"line 3: duplicate key 'weight' \(first on line 2\)"):
        loads_yaml("adapter: a\nweight: 1\nweight: 2\n", source="a.yaml")


def test_nested_duplicate_keys_rejected():
    with pytest.raises(YamlError, match="duplicate key 'x'"):
        loads_yaml("params:\n  x: 1\n  x: 2\n")


def test_python_tags_never_execute(tmp_path):
    marker = tmp_path / "fired"
    doc = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(YamlError, match="python/object/apply"):
        loads_yaml(doc)
    assert not marker.exists()


def test_alias_bomb_rejected_quickly():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(YamlError, match="aliases"):
        loads_yaml(bomb)


def test_deep_nesting_rejected():
    with pytest.raises(YamlError, match=f"nesting deeper than {MAX_DEPTH}"):
        loads_yaml("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))


def test_size_cap(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_BYTES + 10))
    with pytest.raises(Exception, match="cap"):
        load_yaml_file(big)


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter: [unclosed\n")
    with pytest.raises(YamlError) as info:
        load_yaml_file(bad)
    assert str(bad) in str(info.value) and "line" in str(info.value)


def test_non_utf8_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"adapter: \xff\xfe\n")
    with pytest.raises(YamlError, match="not UTF-8"):
        load_yaml_file(bad)
