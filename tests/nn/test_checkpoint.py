"""Baking into checkpoint files (`adaptkit.nn.checkpoint`), checked against float64."""

import json

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adaptkit import Adapter, LoraPair


def _folder(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "model"
    folder.mkdir()
    # A model type transformers does not know: no skeleton to hold these loose tensors to.
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "dtype": str(dtype)[6:]}))
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(48, 32, generator=g).to(dtype),
        "model.layers.0.mlp.down_proj.weight": torch.randn(32, 48, generator=g).to(dtype),
        "model.layers.0.step": torch.tensor([3], dtype=torch.int64),  # not floating: never cast
    }
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, tensors


def _adapter():
    g = torch.Generator().manual_seed(1)
    pair = LoraPair(
        A=torch.randn(4, 32, generator=g) * 1e-2, B=torch.randn(48, 4, generator=g) * 1e-2, alpha=8.0
    )
    return Adapter({"model.layers.0.mlp.up_proj": pair}), pair


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (not a dict)


def test_cast_bakes_in_the_cast_dtype_without_rounding_to_the_checkpoint_dtype(tmp_path):
    from adaptkit.nn.checkpoint import bake_checkpoint

    folder, tensors = _folder(tmp_path, torch.bfloat16)
    adapter, pair = _adapter()
    want = tensors["model.layers.0.mlp.up_proj.weight"].double() + pair.scale * (
        pair.B.double() @ pair.A.double()
    )
    for cast in (None, torch.float32):
        out = tmp_path / f"out-{cast}"
        out.mkdir()
        report = bake_checkpoint(folder, adapter, out, cast=cast)
        assert report["targets_baked"] == 1
        got, metadata = _read(out / "model.safetensors")
        assert metadata == {"format": "pt"}
        assert got["model.layers.0.step"].dtype == torch.int64 and got["model.layers.0.step"].item() == 3
        up = got["model.layers.0.mlp.up_proj.weight"]
        err = float((up.double() - want).abs().max())
        if cast is None:  # the checkpoint's own dtype: W + ΔW rounded once to bf16
            assert up.dtype == torch.bfloat16 and 1e-4 < err < 2e-2
            assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
        else:  # rounded once, to float32: the small update survives
            assert up.dtype == torch.float32 and err < 1e-6
            down = got["model.layers.0.mlp.down_proj.weight"]
            assert down.dtype == torch.float32
            assert torch.equal(down, tensors["model.layers.0.mlp.down_proj.weight"].float())
            assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
