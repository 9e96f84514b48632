"""Reading weight files safely and strict loading with key-naming errors."""

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from lostcli.errors import CheckpointError
from lostcli.persist import compare_state_dict, load_strict, read_state_dict, read_state_dict_parts


class Custom:
    """A class a weights-only unpickler must refuse."""

    def __init__(self) -> None:
        self.payload = 1


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))


def _state(seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in _model().state_dict().items()}


def _assert_loads(path, sd, **kw):
    got = read_state_dict(path, **kw)
    assert sorted(got) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    model = _model()
    load_strict(model, got, str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_ckpt_dict_with_vae_key(tmp_path):
    sd = _state()
    torch.save({"vae": sd, "dit": {"x": torch.zeros(2)}}, tmp_path / "model.ckpt")  # Direct3D layout
    _assert_loads(tmp_path / "model.ckpt", sd)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "l.ckpt")
    _assert_loads(tmp_path / "l.ckpt", sd)  # Lightning-style wrapper + DDP prefix stripped
    with pytest.raises(CheckpointError, match="no state dict under key 'ema'"):
        read_state_dict(tmp_path / "model.ckpt", key="ema")


def test_bare_pt_and_safetensors(tmp_path):
    sd = _state()
    torch.save(sd, tmp_path / "bare.pt")
    _assert_loads(tmp_path / "bare.pt", sd)
    save_file({f"model.{k}": v for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    _assert_loads(tmp_path / "w.safetensors", sd)


def test_dtype_is_cast_to_the_module(tmp_path):
    sd = _state()
    save_file({k: v.half() for k, v in sd.items()}, str(tmp_path / "half.safetensors"))
    model = _model()
    load_strict(model, read_state_dict(tmp_path / "half.safetensors"), "half")
    assert model[0].weight.dtype == torch.float32
    torch.testing.assert_close(model[0].weight, sd["0.weight"].half().float(), rtol=0, atol=0)


def test_arbitrary_pickle_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": Custom()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        read_state_dict(tmp_path / "evil.pt")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'evil.pt'}: refuses to unpickle arbitrary objects")
    assert "Custom" in msg
    assert "\n" not in msg


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.ckpt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unsupported weights format '.npz'"):
        read_state_dict(tmp_path / "w.npz")
    torch.save({"w": torch.zeros(1), "step": 5}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="entry 'step' is a int"):
        read_state_dict(tmp_path / "mixed.pt")


def test_missing_and_misshapen_keys_are_named():
    model = _model()
    sd = _state()
    del sd["1.bias"]
    with pytest.raises(CheckpointError, match=r"^src.pt: does not fit Sequential: 1 missing \(first: 1.bias\)"):
        load_strict(model, sd, "src.pt")
    sd = _state()
    sd["0.weight"] = torch.zeros(5, 3)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"0.weight expects \[4, 3\], file has \[5, 3\]") as e:
        load_strict(model, sd, "src.pt")
    assert "1 unexpected (first: extra.weight)" in str(e.value)
    report = compare_state_dict(model, sd)
    assert not report.ok
    assert report.lines() == ["unexpected: extra.weight", "shape mismatch: 0.weight expects [4, 3], file has [5, 3]"]
    assert compare_state_dict(model, _state()).ok and compare_state_dict(model, _state()).lines() == []
    before = model[0].weight.detach().clone()
    with pytest.raises(CheckpointError):
        load_strict(model, sd, "src.pt")
    assert torch.equal(model[0].weight, before)  # nothing loaded on failure


def test_combined_checkpoint_parts_in_one_read(tmp_path):
    vae, dit = _state(1), _state(2)
    torch.save({"vae": vae, "dit": dit, "epoch": 3}, tmp_path / "model.ckpt")  # Direct3D's image-to-3D layout
    parts = read_state_dict_parts(tmp_path / "model.ckpt", ("vae", "dit", "ema"))
    assert sorted(parts) == ["dit", "vae"]  # a part the file lacks is left out
    for name, sd in (("vae", vae), ("dit", dit)):
        assert sorted(parts[name]) == sorted(sd) and all(torch.equal(parts[name][k], sd[k]) for k in sd)
    torch.save({"vae": vae, "dit": [1, 2]}, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"odd.ckpt: 'dit' is a list, not a state dict"):
        read_state_dict_parts(tmp_path / "odd.ckpt", ("vae", "dit"))
    torch.save({"vae": vae, "dit": {"w": torch.zeros(1), "step": 5}}, tmp_path / "mixed.ckpt")
    with pytest.raises(CheckpointError, match=r"mixed.ckpt \[dit\]: entry 'step' is a int"):
        read_state_dict_parts(tmp_path / "mixed.ckpt", ("vae", "dit"))
    torch.save({"vae": vae, "dit": {"obj": Custom()}}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match=r"evil.ckpt: refuses to unpickle arbitrary objects"):
        read_state_dict_parts(tmp_path / "evil.ckpt", ("vae", "dit"))
    torch.save([vae], tmp_path / "list.ckpt")
    with pytest.raises(CheckpointError, match=r"list.ckpt: expected a dict of state dicts, found list"):
        read_state_dict_parts(tmp_path / "list.ckpt", ("vae", "dit"))
