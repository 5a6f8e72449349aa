"""The trainer: the loss falls, a resumed run equals an uninterrupted one, DDP ranks agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdt_fast import CDT, CDTConfig, load
from cdt_fast.data import SyntheticVideos
from cdt_fast.train import CDTLoss, LossWeights, TrainConfig, Trainer, lr_factor
from cdt_fast.train.distributed import Dist, params_digest

from .helpers import free_port

TINY_MODEL = CDTConfig.small(context_dim=4, unet_dim=4, latent_dim=4)


def tiny_train_config(**overrides) -> TrainConfig:
    values = dict(
        model=TINY_MODEL,
        frames=5,
        size=16,
        batch_size=2,
        steps=6,
        lr=3e-3,
        warmup_steps=2,
        ema_decay=0.9,
        loss=LossWeights(lpips=0.0),
        log_every=1,
        ckpt_every=3,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_tiny_data():
    torch.manual_seed(0)
    model = CDT(TINY_MODEL).train()
    loss_fn = CDTLoss(model, LossWeights(lpips=0.0))
    data = SyntheticVideos(length=2, frames=5, size=16, seed=0)
    x = torch.stack([data.clip(0), data.clip(1)])

    def fixed_loss():  # the same t, noise and posterior draw each time
        with torch.no_grad():
            return loss_fn(x, torch.Generator().manual_seed(123))["loss"].item()

    before = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        opt.zero_grad()
        loss_fn(x, g)["loss"].backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def test_loss_parts_and_gradients():
    torch.manual_seed(0)
    model = CDT(TINY_MODEL).train()
    parts = CDTLoss(model, LossWeights(kl=0.5, lpips=0.0))(
        torch.rand(1, 3, 5, 16, 16) * 2 - 1, torch.Generator().manual_seed(0)
    )
    assert set(parts) == {"loss", "mse", "kl"}
    assert torch.allclose(parts["loss"], parts["mse"] + 0.5 * parts["kl"])
    parts["loss"].backward()
    encoder_grad = model.context_model.enc[0][0].block1.block[0].weight.grad
    unet_grad = model.unet.final_conv[1].weight.grad
    assert (
        encoder_grad is not None and encoder_grad.abs().sum() > 0
    )  # the KL + MSE reach the encoder
    assert unet_grad is not None and unet_grad.abs().sum() > 0


def test_loss_with_lpips_term():
    from cdt_fast.metrics import LPIPS

    torch.manual_seed(0)
    model = CDT(TINY_MODEL).train()
    loss_fn = CDTLoss(model, LossWeights(lpips=0.25, lpips_frames=2), lpips=LPIPS("alex"))
    x = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    parts = loss_fn(x, torch.Generator().manual_seed(0))
    assert torch.allclose(parts["loss"], parts["mse"] + 1e-6 * parts["kl"] + 0.25 * parts["lpips"])
    parts["loss"].backward()
    assert all(p.grad is None for p in loss_fn.lpips.parameters())


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55)
    assert f[110] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_resume_continues_bit_for_bit(tmp_path):
    data = SyntheticVideos(length=3, frames=5, size=16)
    config = tiny_train_config()
    one_go = Trainer(config, data, tmp_path / "a", progress=False, dist_info=Dist())
    one_go.fit()

    first = Trainer(config, data, tmp_path / "b", progress=False, dist_info=Dist())
    first.fit(until=3)
    assert first.latest_checkpoint().name == "step_0000003"
    del first
    torch.manual_seed(999)  # a resumed process starts from some other RNG state
    resumed = Trainer(config, data, tmp_path / "b", resume=True, progress=False, dist_info=Dist())
    assert resumed.step == 3
    resumed.fit()

    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [r["step"] for r in a] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
        assert ra == rb  # loss, its parts, grad norm and LR, bit for bit
    assert params_digest(one_go.model) == params_digest(resumed.model)
    assert all(torch.equal(one_go.ema.shadow[k], resumed.ema.shadow[k]) for k in one_go.ema.shadow)
    # outputs: upstream-format checkpoints with their config, loadable by cdt_fast.load
    ema = load(tmp_path / "b" / "ema.safetensors")
    assert ema.config == TINY_MODEL
    assert torch.equal(
        ema.state_dict()["model.denoise_fn.final_conv.1.weight"],
        resumed.ema.shadow["model.denoise_fn.final_conv.1.weight"],
    )
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "latest",
        "step_0000003",
        "step_0000006",
    ]


def test_resume_needs_a_checkpoint_and_a_fresh_run_an_empty_folder(tmp_path):
    config, data = tiny_train_config(steps=1), SyntheticVideos(length=1, frames=5, size=16)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(config, data, tmp_path, resume=True, progress=False, dist_info=Dist())
    Trainer(config, data, tmp_path, progress=False, dist_info=Dist()).fit()
    with pytest.raises(ValueError, match="already holds"):
        Trainer(config, data, tmp_path, progress=False, dist_info=Dist())


def test_train_config_checks_and_presets():
    from cdt_fast.train import resolve_train_config

    with pytest.raises(ValueError, match="frames"):
        tiny_train_config(frames=4)
    with pytest.raises(ValueError, match="size"):
        tiny_train_config(size=12)
    with pytest.raises(ValueError, match="config must be one of"):
        resolve_train_config("huge")
    tiny, weights = resolve_train_config("tiny")
    assert weights is None and tiny.loss.lpips == 0
    assert TrainConfig.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    assert tiny.replace(lpips=0.5).loss.lpips == 0.5


def test_both_trainers_configs_share_one_run_config():
    """The optimisation and bookkeeping fields are RunConfig's, checked by it for both trainers
    (errors name the class), while each trainer keeps its own defaults."""
    import dataclasses

    from cdt_fast.generation.train import GenTrainConfig
    from cdt_fast.train import RunConfig

    shared = [f.name for f in dataclasses.fields(RunConfig)]
    assert len(shared) == 14
    for cls in (TrainConfig, GenTrainConfig):
        assert issubclass(cls, RunConfig)
        assert [f.name for f in dataclasses.fields(cls)][: len(shared)] == shared
        config = cls()
        assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.lr must be > 0"):
            cls(lr=0.0)
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.keep_checkpoints must be a pos"):
            cls(keep_checkpoints=0)
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.warmup_steps, grad_clip"):
            cls(grad_clip=-1.0)
    defaults = [
        (c.batch_size, c.betas, c.weight_decay, c.ema_decay)
        for c in (TrainConfig(), GenTrainConfig())
    ]
    assert defaults == [(1, (0.9, 0.99), 0.01, 0.999), (8, (0.9, 0.999), 0.0, 0.9999)]


def test_ddp_two_gloo_processes_agree(tmp_path):
    """torchrun with 2 CPU processes runs the train command; rank 0 checks that both ranks hold
    bit-identical weights at the end (the command fails otherwise)."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "cdt_fast",
        "train",
        "--config",
        "tiny",
        "--steps",
        "3",
        "--out",
        str(out),
        "--frames",
        "5",
        "--size",
        "16",
        "--batch-size",
        "1",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 ranks hold identical weights: True" in proc.stdout
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    state = torch.load(
        out / "checkpoints" / "step_0000003" / "trainer_state.pt", weights_only=False
    )
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_t_range_limits_the_drawn_timesteps():
    torch.manual_seed(0)
    model = CDT(TINY_MODEL)
    seen = []
    model.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[1].flatten()))
    x = torch.rand(4, 3, 1, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        CDTLoss(model, LossWeights(lpips=0.0), t_range=(0.75, 1.0))(x, g)
        CDTLoss(model, LossWeights(lpips=0.0))(x, g)
    high, full = seen
    assert (high >= 0.75).all() and (high < 1).all()
    assert (full >= 0).all() and (full < 1).all() and (full < 0.75).any()
    with pytest.raises(ValueError, match="t_range"):
        CDTLoss(model, LossWeights(lpips=0.0), t_range=(0.5, 0.5))


def test_bundled_demo_model_reconstructs_held_out_clips():
    from cdt_fast.metrics import psnr, to_unit_frames
    from cdt_fast.train import demo_model_path

    path = demo_model_path()
    assert path.stat().st_size < 20 * 2**20
    model = load(path)
    assert model.config.name == "tiny" and model.config.latent_dim == 16
    data = SyntheticVideos(length=2, frames=5, size=32, seed=1000)  # training used seeds 0-2
    x = torch.stack([data.clip(0), data.clip(1)])
    recon = model(x, generator=torch.Generator().manual_seed(0))
    value = psnr(to_unit_frames(x), to_unit_frames(recon))
    untrained = CDT(model.config).eval()
    baseline = psnr(
        to_unit_frames(x), to_unit_frames(untrained(x, generator=torch.Generator().manual_seed(0)))
    )
    assert value > baseline + 3, (value, baseline)


def test_bundled_demo_model_on_a_held_out_photograph(tmp_path):
    """Real content the demo never saw: matplotlib's grace_hopper.jpg moved as video (the clips
    of ``photo_eval``), 17 frames at 64x64. The bundled model gives 19.9 dB with every channel
    within 1.4 levels on average; the bounds below leave room for run-to-run noise, not for a
    model that misses the colours."""
    import shutil

    import matplotlib

    from cdt_fast.data import load_image_folder
    from cdt_fast.train import demo_model_path
    from cdt_fast.train.photo_eval import photo_eval

    sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    shutil.copy(sample, tmp_path)
    model = load(demo_model_path()).eval()
    result = photo_eval({"demo": model}, load_image_folder(tmp_path), clips_per_image=2)["demo"]
    assert result["psnr"] > 19.0, result
    assert max(result["abs_color_error"]) < 3.0, result
