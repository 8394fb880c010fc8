"""Fuzzing the readers: any bytes in, only typed AdaptkitErrors out — no crash, hang or huge
allocation (headers are size-checked before anything is allocated)."""

import contextlib
import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptkit import load_adapter
from adaptkit.errors import AdaptkitError
from adaptkit.io.native import adapter_to_bytes
from adaptkit.io.yamlio import loads_yaml
from tests.helpers.adapters import make_adapter

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


VALID = adapter_to_bytes(make_adapter(shapes={"m.a": (3, 2, 1), "m.b": (2, 4, 2)}))


def _load(tmp_path, data: bytes) -> None:
    p = tmp_path / "f.safetensors"
    p.write_bytes(data)
    with contextlib.suppress(AdaptkitError):
        load_adapter(p)


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path, data):
    _load(tmp_path, data)


@FUZZ
@given(
    cut=st.integers(min_value=0),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
)
def test_truncated_and_flipped_valid_files(tmp_path, cut, flips):
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos % len(data)] = value
    _load(tmp_path, bytes(data[: max(0, len(data) - cut % (len(data) + 1))]))


@FUZZ
@given(
    header=st.dictionaries(
        st.text(max_size=20),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ),
        max_size=5,
    ),
    tail=st.binary(max_size=64),
)
def test_random_headers(tmp_path, header, tail):
    raw = json.dumps(header).encode()
    _load(tmp_path, struct.pack("<Q", len(raw)) + raw + tail)


@FUZZ
@given(n=st.integers(min_value=0, max_value=2**64 - 1))
def test_any_header_length(tmp_path, n):
    _load(tmp_path, struct.pack("<Q", n) + b"{}")


@FUZZ
@given(text=st.text(max_size=300))
def test_yaml_text(text):
    with contextlib.suppress(AdaptkitError):
        loads_yaml(text)


@FUZZ
@given(doc=st.text(max_size=200))
def test_peft_config_text(tmp_path, doc):
    from adaptkit.io.specs import load_spec

    folder = tmp_path / "peft"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(doc)
    (folder / "adapter_model.safetensors").write_bytes(VALID)
    with contextlib.suppress(AdaptkitError):
        load_spec(folder)


@FUZZ
@given(
    cfg=st.fixed_dictionaries(
        {
            "peft_type": st.sampled_from(["LORA", "IA3", 3]),
            "r": st.one_of(st.integers(-3, 8), st.text(max_size=3), st.none()),
            "lora_alpha": st.one_of(st.floats(), st.integers(-2, 9)),
            "rank_pattern": st.dictionaries(st.text(max_size=8), st.integers(-1, 9), max_size=3),
        }
    )
)
def test_peft_config_values(tmp_path, cfg):
    from adaptkit.io.specs import load_spec

    folder = tmp_path / "peftv"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    (folder / "adapter_model.safetensors").write_bytes(VALID)
    with contextlib.suppress(AdaptkitError):
        load_spec(folder)
