"""Training, sampling and the CLI loop of the latent video generator, CI-sized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdt_fast.config import CDTConfig
from cdt_fast.generation.demo import write_latent_folder
from cdt_fast.generation.evaluation import latent_frechet_distance
from cdt_fast.generation.model import GenConfig
from cdt_fast.generation.sampling import load_generator, sample, sample_latents
from cdt_fast.generation.stats import latent_stats
from cdt_fast.generation.train import GEN_PRESETS, GenTrainer, LatentClips
from cdt_fast.train.distributed import Dist, params_digest


def latent_config() -> CDTConfig:
    """A tokenizer config for hand-made 4-channel latents (never run: only its metadata)."""
    return CDTConfig.small(name="toy", context_dim=8, unet_dim=8, latent_dim=4)


def _toy_clips(count: int, seed: int):
    """Latents [1, 4, 3, 4, 4] with structure a generator must learn: one random level per clip
    and channel, constant over space and time, plus a fixed horizontal ramp."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 4).reshape(1, 1, 1, 1, 4).expand(1, 4, 3, 4, 4)
    return [
        2 * torch.randn(1, 4, 1, 1, 1, generator=g)
        + ramp
        + 0.05 * torch.randn(1, 4, 3, 4, 4, generator=g)
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_latents")
    write_latent_folder(root / "train", _toy_clips(32, 0), latent_config())
    write_latent_folder(root / "held_out", _toy_clips(32, 1), latent_config())
    latent_stats(root / "train")
    return root


def _config(steps: int, **changes):
    model = GenConfig(name="toy", in_channels=4, hidden=32, depth=2, heads=2)
    values = dict(
        model=model,
        frames=3,
        steps=steps,
        batch_size=8,
        warmup_steps=5,
        lr=6e-3,
        ema_decay=0.8,
        log_every=5,
        ckpt_every=1000,
    )
    values.update(changes)
    return GEN_PRESETS["tiny"]().replace(**values)


def test_training_lowers_latent_frechet_distance(toy_data, tmp_path):
    dataset = LatentClips(toy_data / "train", frames=3)
    assert dataset.normalizer.source == "latent_stats"
    held = LatentClips(toy_data / "held_out", frames=3, normalizer=dataset.normalizer)
    reference = torch.stack([held.clip(i)[0] for i in range(len(held))])
    trainer = GenTrainer(_config(60), dataset, tmp_path / "run", progress=False, dist_info=Dist())
    shape = (32,) + tuple(reference.shape[1:])
    untrained = latent_frechet_distance(
        sample_latents(trainer.model.eval(), shape, steps=8, seed=1), reference
    )
    trainer.model.train()
    trainer.fit()
    gen = load_generator(tmp_path / "run")
    trained = latent_frechet_distance(sample_latents(gen.model, shape, steps=8, seed=1), reference)
    assert trained < 0.6 * untrained, (untrained, trained)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(5, 61, 5))


def test_resume_is_bit_exact(toy_data, tmp_path):
    dataset = LatentClips(toy_data / "train", frames=2, size=(2, 4))
    config = _config(
        6, frames=2, size=(2, 4), ckpt_every=3, model=_config(1).model.replace(num_classes=2)
    )
    straight = GenTrainer(config, dataset, tmp_path / "a", progress=False, dist_info=Dist())
    straight.fit()
    first = GenTrainer(config, dataset, tmp_path / "b", progress=False, dist_info=Dist())
    first.fit(until=3)
    with pytest.raises(ValueError, match="resume"):
        GenTrainer(config, dataset, tmp_path / "b", progress=False, dist_info=Dist())
    resumed = GenTrainer(
        config, dataset, tmp_path / "b", resume=True, progress=False, dist_info=Dist()
    )
    assert resumed.step == 3
    resumed.fit()
    assert params_digest(resumed.model) == params_digest(straight.model)
    ema_a = load_generator(tmp_path / "a").model
    ema_b = load_generator(tmp_path / "b").model
    assert params_digest(ema_a) == params_digest(ema_b)


@pytest.fixture(scope="module")
def toy_run(toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run") / "run"
    config = _config(2, model=_config(1).model.replace(num_classes=2, causal=True))
    GenTrainer(
        config, LatentClips(toy_data / "train", frames=3), out, progress=False, dist_info=Dist()
    ).fit()
    return out


def test_sampling_is_seeded_and_guided(toy_run):
    gen = load_generator(toy_run)
    assert gen.model.config.causal and gen.frames == 3 and gen.latent_size == (4, 4)
    a = sample(gen, frames=9, steps=3, seed=5)
    b = sample(gen, frames=9, steps=3, seed=5)
    torch.testing.assert_close(a, b)
    assert a.shape == (1, 4, 3, 4, 4)
    guided = sample(gen, frames=9, steps=3, seed=5, class_label=1, cfg=3.0, size=(16, 32))
    assert guided.shape == (1, 4, 3, 2, 4)
    chunked = sample(gen, frames=13, steps=3, seed=5, chunk=2)
    assert chunked.shape == (1, 4, 4, 4, 4) and torch.isfinite(chunked).all()
    with pytest.raises(ValueError, match="class_label"):
        sample(gen, class_label=7)
    with pytest.raises(ValueError, match="frames"):
        sample(gen, frames=8)
    with pytest.raises(ValueError, match="size"):
        sample(gen, frames=9, size=(12, 16))


def test_sample_saves_a_decodable_latent_file(toy_run, tmp_path):
    from cdt_fast.latents import read_latent

    z = sample(toy_run, frames=5, steps=2, save_latents=tmp_path / "z.safetensors")
    info = read_latent(tmp_path / "z.safetensors")
    torch.testing.assert_close(info.latent, z)
    assert info.config.architecture_hash() == latent_config().architecture_hash()
    with pytest.raises(ValueError, match="tokenizer"):  # the bundled CDT is another architecture
        sample(toy_run, frames=5, steps=1, output=tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_cli_loop_end_to_end(tmp_path):
    """encode (the demo tokenizer) -> latent-stats -> gen-train -> generate -> decoded video."""
    import cdt_fast
    from cdt_fast import video_io
    from cdt_fast.cli import main
    from cdt_fast.generation.demo import encode_synthetic
    from cdt_fast.train import demo_model_path

    config = cdt_fast.load(demo_model_path()).config
    write_latent_folder(tmp_path / "latents", encode_synthetic(4, 0, frames=5, size=16), config)
    assert main(["latent-stats", str(tmp_path / "latents")]) == 0
    assert "latent_stats" in json.loads((tmp_path / "latents" / "manifest.json").read_text())
    run = tmp_path / "run"
    args = ["gen-train", str(tmp_path / "latents"), "--out", str(run), "--steps", "2"]
    assert (
        main(args + ["--frames", "2", "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    )
    assert (run / "ema.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    out = tmp_path / "gen.mp4"
    argv = ["generate", str(run), "-o", str(out), "--frames", "5", "--steps", "2"]
    assert (
        main(argv + ["--save-latents", str(tmp_path / "gen.safetensors"), "--device", "cpu"]) == 0
    )
    assert video_io.probe(str(out)).frames == 5
    assert main(["generate", str(run), "--frames", "4", "-o", str(tmp_path / "bad.mp4")]) == 2
    assert not Path(tmp_path / "bad.mp4").exists()


def test_latent_clips_check_their_inputs(toy_data, tmp_path):
    with pytest.raises(ValueError, match="fewer than 4 latent frames"):
        LatentClips(toy_data / "train", frames=4)
    with pytest.raises(ValueError, match="labels"):
        LatentClips(toy_data / "train", frames=3, labels="files")
    with pytest.raises(FileNotFoundError, match="manifest"):
        LatentClips(tmp_path, frames=3)
    clips = LatentClips(toy_data / "train", frames=2, size=(2, 2))
    z, y = clips.clip(0, torch.Generator().manual_seed(0))
    assert z.shape == (4, 2, 2, 2) and y.dtype == torch.long


def test_labels_from_source_folders(tmp_path):
    sources = ["dogs/a.mp4", "cats/b.mp4", "dogs/c.mp4"]
    write_latent_folder(tmp_path, _toy_clips(3, 2), latent_config(), sources=sources)
    clips = LatentClips(tmp_path, frames=3, labels="dirs")
    assert clips.class_names == ["cats", "dogs"]
    assert [int(clips.clip(i)[1]) for i in range(3)] == [1, 0, 1]


def test_bundled_demo_generator_generates(tmp_path):
    from cdt_fast import video_io
    from cdt_fast.cli import main
    from cdt_fast.generation.sampling import demo_generator_path

    gen = load_generator(demo_generator_path())  # the asset ships with the package
    assert gen.tokenizer.name == "tiny" and gen.model.config.name == "tiny"
    out = tmp_path / "demo.mp4"
    assert main(["generate", "demo", "-o", str(out), "--frames", "5", "--steps", "2"]) == 0
    assert video_io.probe(str(out)).frames == 5


def test_a_cut_generator_file_is_refused_with_one_message(tmp_path):
    """A generator's weights file whose header does not read (an interrupted copy) raises the
    ValueError every .safetensors reader of the package gives, naming the file."""
    from cdt_fast.generation.sampling import demo_generator_path

    data = demo_generator_path().read_bytes()
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(data[:40])
    with pytest.raises(ValueError, match="model.safetensors is not a readable .safetensors file"):
        load_generator(cut)
