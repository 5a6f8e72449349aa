"""Checkpoint formats in and out, strict key/shape checks, atomic writes, load_cdt."""

from __future__ import annotations

import os

import pytest
import torch

import cdt_fast
from cdt_fast import CDT, CheckpointMismatchError, randomize_
from cdt_fast.checkpoint import atomic_write, read_state_dict

from .conftest import FIXTURES, tiny_config, upstream_state_dict


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_load_upstream_safetensors_fixture():
    config = tiny_config("base")
    model = cdt_fast.load(config, FIXTURES / "base_state_dict.safetensors")
    reference = CDT(config)
    reference.load_state_dict(upstream_state_dict("base"))
    _assert_same_weights(model, reference)
    assert not model.training


@pytest.mark.parametrize("nesting", ["state_dict", "module", "both", "flat", "ddp"])
def test_ckpt_roundtrip_with_upstream_nesting(tmp_path, nesting):
    config = tiny_config("small")
    model = randomize_(CDT(config), seed=3)
    sd = model.state_dict()
    payload = {
        "flat": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "module": {"module": sd},
        "both": {"state_dict": {"module": sd}},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
    }[nesting]
    path = tmp_path / "cdt_small.ckpt"
    torch.save(payload, path)
    _assert_same_weights(cdt_fast.load(config, path), model)


def test_save_load_roundtrip_safetensors_with_config(tmp_path):
    model = randomize_(CDT(tiny_config("base")), seed=4)
    path = cdt_fast.save(model, tmp_path / "m.safetensors")
    loaded = cdt_fast.load(path)  # the config travels in the file
    assert loaded.config == model.config
    _assert_same_weights(loaded, model)


def test_save_load_roundtrip_ckpt(tmp_path):
    model = randomize_(CDT(tiny_config("small")), seed=5)
    path = cdt_fast.save(model, tmp_path / "m.ckpt")
    _assert_same_weights(cdt_fast.load(model.config, path), model)


def test_missing_key_fails_naming_it_and_loads_nothing(tmp_path):
    config = tiny_config("small")
    sd = randomize_(CDT(config), seed=1).state_dict()
    dropped = "model.denoise_fn.final_conv.1.bias"
    del sd[dropped]
    sd["model.extra.weight"] = torch.zeros(1)
    sd["model.denoise_fn.final_conv.1.weight"] = torch.zeros(3, 4, 1, 1, 1)
    path = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    with pytest.raises(CheckpointMismatchError) as info:
        cdt_fast.load(config, path)
    message = str(info.value)
    assert dropped in message and "missing keys (1)" in message
    assert "model.extra.weight" in message and "unexpected keys (1)" in message
    assert (
        "model.denoise_fn.final_conv.1.weight (checkpoint [3, 4, 1, 1, 1] vs model [3, 4, 3, 7, 7])"
        in message
    )

    model = CDT(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError):
        cdt_fast.checkpoint.load_into(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    with pytest.warns(UserWarning, match="loaded the keys that fit"):
        missing, unexpected = cdt_fast.checkpoint.load_into(model, sd, strict=False)
    assert missing == [dropped] and unexpected == ["model.extra.weight"]


class Opaque:
    """Stands for the non-tensor objects a training framework pickles beside the weights."""


def test_pickle_with_objects_needs_explicit_trust(tmp_path):
    path = tmp_path / "lightning.ckpt"
    sd = CDT(tiny_config("small")).state_dict()
    torch.save({"state_dict": sd, "hparams": Opaque()}, path)
    with pytest.raises(ValueError, match="weights_only=False"):
        read_state_dict(path)
    assert len(read_state_dict(path, weights_only=False)) == len(sd)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        read_state_dict(junk)


def test_cut_files_and_missing_paths_are_named(tmp_path, capsys):
    """A .safetensors cut short (an interrupted download or copy) is refused with a ValueError
    naming it, wherever it is read (the CLI: one line, exit 2); a path that does not exist is
    "no such file", a name that is neither a preset nor a file says so, and an upstream
    checkpoint given as the preset says how to pass it."""
    from cdt_fast.cli import main

    model = randomize_(CDT(tiny_config("small")))
    whole = cdt_fast.save(model, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    unreadable = r"cut.safetensors is not a readable .safetensors file .*fetch it again"
    for read in (cdt_fast.load, lambda p: cdt_fast.load(model.config, p), read_state_dict):
        with pytest.raises(ValueError, match=unreadable):
            read(cut)
    assert main(["info", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "is not a readable .safetensors file" in err and err.count("\n") == 1, err
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.safetensors"):
        cdt_fast.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no such file: weights/cdt_base.ckpt"):
        cdt_fast.load("weights/cdt_base.ckpt")
    with pytest.raises(ValueError, match="'Base', neither a preset nor a file"):
        cdt_fast.load("Base")
    upstream = tmp_path / "up.ckpt"
    torch.save({"state_dict": model.state_dict()}, upstream)
    with pytest.raises(ValueError, match=r"holds no CDT config.*cdt_fast.load\('base' or 'small'"):
        cdt_fast.load(upstream)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert os.listdir(tmp_path) == []


def test_load_cdt_mirrors_upstream(tmp_path, monkeypatch, hub_cache):
    config = tiny_config("small")
    source = randomize_(CDT(config), seed=2)
    path = tmp_path / "cdt_small.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    model = cdt_fast.load_cdt(
        "small",
        ckpt=str(path),
        sampling_step=3,
        enc_frames=8,
        context_dim=4,
        unet_dim=4,
        latent_dim=4,
    )
    assert model.dtype == torch.float16 and model.latent_scale == 1.3
    assert model.sample_steps == 3 and model.config.encode_frames == 8
    _assert_same_weights(model, source.half())
    monkeypatch.chdir(tmp_path)  # no ./pretrained/cdt_base.ckpt: the Hub (an empty cache here)
    with pytest.raises(FileNotFoundError, match="cdt_base.ckpt of the Hugging Face repository"):
        cdt_fast.load_cdt("base")
    with pytest.raises(ValueError, match="version must be"):
        cdt_fast.load_cdt("large")


def test_load_rejects_bad_arguments():
    with pytest.raises(ValueError, match="preset_or_config"):
        cdt_fast.load("medium")
    with pytest.raises(TypeError, match="preset_or_config"):
        cdt_fast.load(3)
    with pytest.raises(TypeError, match="dtype"):
        cdt_fast.load(tiny_config("small"), dtype="float16")


def test_atomic_write_gives_the_permissions_of_open(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: open(tmp, "w").write("x"))
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644
