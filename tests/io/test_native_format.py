"""The native file: bit-identical round trips and one negative test per rejection."""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from adaptkit import load_adapter, save_adapter
from adaptkit.errors import FormatError, InvalidAdapterError, OutputError, SchemaError
from adaptkit.io.native import build_manifest
from adaptkit.io.safetensors_strict import MAX_HEADER_BYTES, read_header
from tests.helpers.adapters import make_adapter
from tests.helpers.files import raw_safetensors


def _manifest(targets):
    return {"format": "adaptkit.lora", "format_version": 1, "targets": targets}


def _write(path, tensors, manifest):
    meta = {"adaptkit": json.dumps(manifest)} if manifest is not None else {"format": "pt"}
    path.write_bytes(st_save(tensors, metadata=meta))
    return path


def _ls(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    adapter = make_adapter(1, dtype=dtype)
    adapter.provenance = {"recipe": {"strategy": "linear"}, "seed": 7}
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    loaded = load_adapter(path)
    assert set(loaded.targets) == set(adapter.targets)
    for name, pair in adapter.targets.items():
        got = loaded.targets[name]
        assert got.A.dtype == dtype and got.B.dtype == dtype
        assert torch.equal(got.A.view(torch.uint8), pair.A.view(torch.uint8))
        assert torch.equal(got.B.view(torch.uint8), pair.B.view(torch.uint8))
        assert (got.alpha, got.scaling, got.explicit_scale) == (pair.alpha, pair.scaling, None)
    assert build_manifest(loaded) == build_manifest(adapter)
    # Saving the loaded adapter again produces the very same bytes.
    again = save_adapter(loaded, tmp_path / "b.safetensors")
    assert again.read_bytes() == path.read_bytes()


def test_save_refuses_existing_output_unless_overwrite(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        save_adapter(make_adapter(), path)
    assert path.read_bytes() == b"old"
    save_adapter(make_adapter(), path, overwrite=True)
    assert load_adapter(path).targets


def test_invalid_adapter_is_never_written(tmp_path):
    adapter = make_adapter()
    adapter.targets["model.layers.0.self_attn.v_proj"].A[0, 0] = float("nan")
    old = tmp_path / "a.safetensors"
    old.write_bytes(b"previous")
    with pytest.raises(InvalidAdapterError, match=r"v_proj\.lora_A\.weight: contains NaN"):
        save_adapter(adapter, old, overwrite=True)
    assert old.read_bytes() == b"previous"
    assert _ls(tmp_path) == ["a.safetensors"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_adapter(make_adapter(0), path)
    before = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputError, match="No space left on device"):
        save_adapter(make_adapter(1), path, overwrite=True)
    assert path.read_bytes() == before
    assert _ls(tmp_path) == ["a.safetensors"]


# --- rejections on load -------------------------------------------------------------


def test_duplicate_tensor_keys_rejected(tmp_path):
    entry = '{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}'
    meta = json.dumps(
        {"adaptkit": json.dumps(_manifest({"m": {"rank": 1, "alpha": 1, "scaling": "alpha/r"}}))}
    )
    text = f'{{"__metadata__":{meta},"m.lora_A.weight":{entry},"m.lora_A.weight":{entry}}}'
    path = tmp_path / "dup.safetensors"
    path.write_bytes(raw_safetensors({}, b"\0" * 8, header_text=text))
    with pytest.raises(FormatError, match=r"duplicate key 'm\.lora_A\.weight'"):
        load_adapter(path)


def test_factor_without_its_pair_rejected(tmp_path):
    path = _write(
        tmp_path / "half.safetensors",
        {"m.lora_A.weight": torch.ones(2, 3)},
        _manifest({"m": {"rank": 2, "alpha": 2, "scaling": "alpha/r"}}),
    )
    with pytest.raises(InvalidAdapterError, match=r"m\.lora_B\.weight: missing"):
        load_adapter(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_rejected_naming_the_tensor(tmp_path, bad):
    B = torch.ones(4, 2)
    B[1, 1] = bad
    path = _write(
        tmp_path / "nan.safetensors",
        {"layer.q.lora_A.weight": torch.ones(2, 3), "layer.q.lora_B.weight": B},
        _manifest({"layer.q": {"rank": 2, "alpha": 2, "scaling": "alpha/r"}}),
    )
    with pytest.raises(InvalidAdapterError, match=r"layer\.q\.lora_B\.weight: contains NaN or Inf"):
        load_adapter(path)


@pytest.mark.parametrize(
    ("b_shape", "rank", "message"),
    [((4, 2), 8, "disagrees with manifest rank 8"), ((4, 3), 2, "rank mismatch")],
    ids=["rank-disagrees-with-manifest", "factors-disagree-with-each-other"],
)
def test_factor_shapes_disagreeing_with_the_manifest_or_each_other_rejected(tmp_path, b_shape, rank, message):
    path = _write(
        tmp_path / "bad.safetensors",
        {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(*b_shape)},
        _manifest({"m": {"rank": rank, "alpha": rank, "scaling": "alpha/r"}}),
    )
    with pytest.raises(InvalidAdapterError, match=message):
        load_adapter(path)


def test_oversized_header_rejected_before_allocating(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(FormatError, match=f"exceeds the {MAX_HEADER_BYTES}-byte cap"):
        load_adapter(path)
    path.write_bytes(struct.pack("<Q", 5000) + b"{}")
    with pytest.raises(FormatError, match="truncated"):
        load_adapter(path)


def test_not_a_regular_file_rejected(tmp_path):
    with pytest.raises(FormatError, match="directory"):
        load_adapter(tmp_path)
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(FormatError, match="not a regular file"):
        load_adapter(fifo)
    with pytest.raises(FormatError, match="not found"):
        load_adapter(tmp_path / "missing.safetensors")


def test_every_truncation_point_is_a_typed_error(tmp_path):
    data = tmp_path / "ok.safetensors"
    save_adapter(make_adapter(shapes={"m": (3, 2, 1)}), data)
    blob = data.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(blob)):
        cut.write_bytes(blob[:n])
        with pytest.raises((FormatError, InvalidAdapterError)):
            load_adapter(cut)


def test_trailing_bytes_and_bad_offsets_rejected(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapter(make_adapter(shapes={"m": (3, 2, 1)}), path)
    blob = path.read_bytes()
    (tmp_path / "trail.safetensors").write_bytes(blob + b"\0\0\0\0")
    with pytest.raises(InvalidAdapterError, match="trailing bytes"):
        load_adapter(tmp_path / "trail.safetensors")

    header, _, _ = read_header(path)
    header["m.lora_B.weight"]["shape"] = header["m.lora_A.weight"]["shape"]  # same size, same bytes
    header["m.lora_B.weight"]["data_offsets"] = header["m.lora_A.weight"]["data_offsets"]
    data = blob[8 + struct.unpack("<Q", blob[:8])[0] :]
    (tmp_path / "overlap.safetensors").write_bytes(raw_safetensors(header, data))
    with pytest.raises(InvalidAdapterError, match="overlaps"):
        load_adapter(tmp_path / "overlap.safetensors")

    header["m.lora_B.weight"]["data_offsets"] = [0, 10_000]
    (tmp_path / "oob.safetensors").write_bytes(raw_safetensors(header, data))
    with pytest.raises(InvalidAdapterError, match="out of bounds"):
        load_adapter(tmp_path / "oob.safetensors")

    header["m.lora_B.weight"]["data_offsets"] = header["m.lora_A.weight"]["data_offsets"]
    header["m.lora_B.weight"]["shape"] = [4, 1]  # 16 bytes claimed in an 8-byte span
    (tmp_path / "span.safetensors").write_bytes(raw_safetensors(header, data))
    with pytest.raises(InvalidAdapterError, match=r"F32 \[4, 1\] needs 16 bytes but spans 8"):
        load_adapter(tmp_path / "span.safetensors")
    del header["m.lora_B.weight"]["shape"]
    (tmp_path / "noshape.safetensors").write_bytes(raw_safetensors(header, data))
    with pytest.raises(InvalidAdapterError, match="shape None is not a list"):
        load_adapter(tmp_path / "noshape.safetensors")


def test_non_float_dtype_rejected(tmp_path):
    path = _write(
        tmp_path / "int.safetensors",
        {
            "m.lora_A.weight": torch.ones(2, 3, dtype=torch.int32),
            "m.lora_B.weight": torch.ones(4, 2),
        },
        _manifest({"m": {"rank": 2, "alpha": 2, "scaling": "alpha/r"}}),
    )
    with pytest.raises(InvalidAdapterError, match=r"m\.lora_A\.weight: dtype 'I32' is not a float"):
        load_adapter(path)


def test_missing_manifest_rejected_with_hint(tmp_path):
    path = _write(tmp_path / "plain.safetensors", {"x": torch.ones(1)}, None)
    with pytest.raises(FormatError, match="no 'adaptkit' manifest") as info:
        load_adapter(path)
    assert "PEFT" in str(info.value)


def test_manifest_schema_problems_all_reported(tmp_path):
    manifest = _manifest({"m": {"rank": 0, "scaling": "alpha/r"}})
    manifest["colour"] = "blue"
    path = _write(
        tmp_path / "bad.safetensors",
        {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.ones(4, 2)},
        manifest,
    )
    with pytest.raises(InvalidAdapterError) as info:
        load_adapter(path)
    text = " | ".join(info.value.problems)
    assert "colour" in text and "targets.m.rank" in text and "alpha" in text
    assert len(info.value.problems) >= 3


def test_manifest_with_nan_literal_rejected(tmp_path):
    text = (
        '{"format":"adaptkit.lora","format_version":1,'
        '"targets":{"m":{"rank":1,"alpha":NaN,"scaling":"alpha/r"}}}'
    )
    path = tmp_path / "nan.safetensors"
    path.write_bytes(
        st_save(
            {"m.lora_A.weight": torch.ones(1, 2), "m.lora_B.weight": torch.ones(2, 1)},
            metadata={"adaptkit": text},
        )
    )
    with pytest.raises(FormatError, match="non-finite number NaN"):
        load_adapter(path)


def test_unlisted_tensors_and_unlisted_targets_rejected(tmp_path):
    path = _write(
        tmp_path / "extra.safetensors",
        {
            "m.lora_A.weight": torch.ones(2, 3),
            "m.lora_B.weight": torch.ones(4, 2),
            "n.lora_A.weight": torch.ones(1, 3),
            "n.lora_B.weight": torch.ones(4, 1),
            "bias": torch.ones(4),
        },
        _manifest(
            {
                "m": {"rank": 2, "alpha": 2, "scaling": "alpha/r"},
                "o": {"rank": 1, "alpha": 1, "scaling": "alpha/r"},
            }
        ),
    )
    with pytest.raises(InvalidAdapterError) as info:
        load_adapter(path)
    text = " | ".join(info.value.problems)
    assert "bias: unexpected tensor" in text
    assert "n: tensors present but not listed" in text
    assert "o: listed in the manifest but has no tensors" in text


def test_schema_error_type_for_manifest_on_save(tmp_path):
    adapter = make_adapter()
    adapter.base_model.name = 5  # type: ignore[assignment]
    with pytest.raises(SchemaError, match=r"base_model\.name"):
        save_adapter(adapter, tmp_path / "x.safetensors")
    assert _ls(tmp_path) == []


def test_targets_sharing_one_tensor_save_and_load(tmp_path):
    """safetensors refuses shared storage; the writer copies a tensor used twice."""
    import torch

    from adaptkit import Adapter, LoraPair, load_adapter, save_adapter

    pair = LoraPair(torch.ones(2, 6), torch.ones(8, 2), alpha=2.0)
    back = load_adapter(save_adapter(Adapter({"a.q": pair, "b.q": pair}), tmp_path / "s.safetensors"))
    assert torch.equal(back.targets["a.q"].A, back.targets["b.q"].A) and set(back.targets) == {"a.q", "b.q"}


def _variants_adapter():
    """One target of every kind and variant the format holds, plus trained token rows."""
    from adaptkit import Adapter, LoraPair, SavedModule, TrainableTokens

    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    targets = {
        "m.emb": LoraPair(A=r(2, 8), B=r(20, 2), alpha=4.0, kind="embedding", magnitude=r(8).abs()),
        "m.q": LoraPair(A=r(2, 8), B=r(6, 2), alpha=4.0, bias=r(6)),
        "m.v": LoraPair(A=r(2, 8), B=r(6, 2), alpha=4.0, magnitude=r(6).abs()),
        "m.experts.down_proj": LoraPair(A=r(3, 2, 4), B=r(3, 8, 2), alpha=4.0, kind="experts"),
    }
    return Adapter(
        targets=targets,
        saved={"m.k": SavedModule({"bias": r(6)}, origin="bias")},
        tokens={"m.emb": TrainableTokens(indices=[4, 1], values=r(2, 8))},
    )


def test_every_variant_round_trips_bit_for_bit(tmp_path):
    adapter = _variants_adapter()
    path = save_adapter(adapter, tmp_path / "v.safetensors")
    loaded = load_adapter(path)
    manifest = build_manifest(loaded)
    assert manifest == build_manifest(adapter)
    assert manifest["targets"]["m.emb"]["kind"] == "embedding" and manifest["targets"]["m.emb"]["dora"]
    assert manifest["targets"]["m.q"]["bias"] and "kind" not in manifest["targets"]["m.q"]
    assert manifest["targets"]["m.experts.down_proj"] == {
        "rank": 2,
        "scaling": "alpha/r",
        "alpha": 4.0,
        "kind": "experts",
    }
    assert manifest["trainable_tokens"] == {"m.emb": {"indices": [4, 1]}}
    for name, pair in adapter.targets.items():
        got = loaded.targets[name].tensors()
        assert set(got) == set(pair.tensors()) and all(
            torch.equal(got[k], t) for k, t in pair.tensors().items()
        )
    assert torch.equal(loaded.tokens["m.emb"].values, adapter.tokens["m.emb"].values)
    assert save_adapter(loaded, tmp_path / "w.safetensors").read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t, m: t.pop("m.q.lora_B.bias"), "m.q.lora_B.bias: the manifest declares bias: true"),
        (
            lambda t, m: m["targets"]["m.v"].pop("dora"),
            "m.v.lora_magnitude_vector: the manifest does not declare dora",
        ),
        (
            lambda t, m: t.update({"m.emb.trainable_tokens": torch.ones(3, 8)}),
            "values are (3, 8) for 2 token ids",
        ),
        (
            lambda t, m: m["trainable_tokens"]["m.emb"].update(indices=[4, 4]),
            "trainable_tokens.m.emb.indices",
        ),
        (
            lambda t, m: t.update({"m.experts.down_proj.lora_A.weight": torch.ones(2, 2, 4)}),
            "experts mismatch",
        ),
    ],
    ids=["bias-missing", "dora-undeclared", "token-rows", "token-ids-repeat", "experts-disagree"],
)
def test_variant_tensors_must_match_their_manifest(tmp_path, edit, message):
    from safetensors.torch import load as st_load

    from adaptkit.io.native import adapter_to_bytes

    adapter = _variants_adapter()
    tensors = st_load(adapter_to_bytes(adapter))
    manifest = build_manifest(adapter)
    edit(tensors, manifest)
    path = _write(tmp_path / "bad.safetensors", tensors, manifest)
    with pytest.raises((InvalidAdapterError, SchemaError)) as info:
        load_adapter(path)
    assert message in str(info.value)
