"""The released weights: fetched from a Hugging Face cache (offline, in a temporary folder), and
one clear error when they cannot be had. No test here touches the network."""

from __future__ import annotations

import io
import os
import sys

import pytest
import torch

import cdt_fast
from cdt_fast import CDT, CDTConfig, CheckpointMismatchError, hub, randomize_

from .conftest import tiny_config
from .helpers import put_in_hub_cache

pytest.importorskip("huggingface_hub")


def _ckpt_bytes(model: CDT) -> bytes:
    """An upstream-style checkpoint (Lightning's ``state_dict`` nesting) of ``model``."""
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict()}, buffer)
    return buffer.getvalue()


def _tiny(seed: int) -> CDT:
    return randomize_(CDT(tiny_config("small")), seed=seed)


def _same_weights(a: CDT, b: CDT) -> bool:
    """Whether ``a`` holds ``b``'s weights (rounded to ``a``'s dtype)."""
    pairs = zip(a.state_dict().values(), b.state_dict().values())
    return all(torch.equal(x, y.to(x.dtype)) for x, y in pairs)


def _files(folder) -> list:
    return sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
    )


def test_load_reads_the_release_from_the_hub_cache(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./pretrained here
    source = _tiny(1)
    put_in_hub_cache(hub_cache, "yangnianzu/CDT", "cdt_small.ckpt", _ckpt_bytes(source))
    # a CDTConfig counts as the preset it is named after (tiny_config keeps the name "small")
    assert _same_weights(cdt_fast.load(tiny_config("small")), source)
    sizes = {k: v for k, v in tiny_config("small").to_dict().items() if k.endswith("_dim")}
    model = cdt_fast.load_cdt("small", sampling_step=2, **sizes, out_channels=3)
    assert model.dtype == torch.float16 and model.sample_steps == 2
    assert _same_weights(model, source)

    from cdt_fast.integrations.diffusers import AutoencoderCDT

    vae = AutoencoderCDT.from_upstream(preset=tiny_config("small"))
    assert _same_weights(vae.cdt, source)


def test_release_location_can_be_overridden(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, tagged, renamed, other = _tiny(1), _tiny(2), _tiny(3), _tiny(4)
    put_in_hub_cache(hub_cache, "yangnianzu/CDT", "cdt_small.ckpt", _ckpt_bytes(main))
    put_in_hub_cache(hub_cache, "yangnianzu/CDT", "cdt_small.ckpt", _ckpt_bytes(tagged), "v2")
    put_in_hub_cache(hub_cache, "yangnianzu/CDT", "renamed.ckpt", _ckpt_bytes(renamed))
    put_in_hub_cache(hub_cache, "someone/cdt-tuned", "cdt_small.ckpt", _ckpt_bytes(other))
    config = tiny_config("small")
    assert _same_weights(cdt_fast.load(config, revision="v2"), tagged)
    assert _same_weights(cdt_fast.load(config, filename="renamed.ckpt"), renamed)
    assert _same_weights(cdt_fast.load(config, repo_id="someone/cdt-tuned"), other)
    # load_cdt skips ./pretrained when the Hub location is given
    (tmp_path / "pretrained").mkdir()
    torch.save({"state_dict": main.state_dict()}, tmp_path / "pretrained" / "cdt_small.ckpt")
    sizes = {k: v for k, v in config.to_dict().items() if k.endswith("_dim")}
    local = cdt_fast.load_cdt("small", dtype=torch.float32, **sizes, out_channels=3)
    assert _same_weights(local, main)
    hubbed = cdt_fast.load_cdt("small", dtype=torch.float32, revision="v2", **sizes, out_channels=3)
    assert _same_weights(hubbed, tagged)


def test_a_local_checkpoint_wins_and_refuses_hub_options(hub_cache, tmp_path):
    source = _tiny(5)
    path = tmp_path / "mine.ckpt"
    path.write_bytes(_ckpt_bytes(source))
    assert _same_weights(cdt_fast.load(tiny_config("small"), path), source)  # cache is empty
    with pytest.raises(ValueError, match="revision name a Hub download"):
        cdt_fast.load(tiny_config("small"), path, revision="v2")


def test_released_preset_with_a_misfit_checkpoint_is_refused_by_name(hub_cache):
    snapshot = put_in_hub_cache(
        hub_cache, "yangnianzu/CDT", "cdt_small.ckpt", _ckpt_bytes(_tiny(1))
    )
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as err:
        cdt_fast.load("small")  # the full-size preset
    assert str(snapshot) in str(err.value)


def test_unavailable_release_says_how_to_get_it(hub_cache, monkeypatch):
    before = _files(hub_cache)
    with pytest.raises(hub.ReleaseUnavailableError) as err:
        cdt_fast.load("base")
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "yangnianzu/CDT",
        "cdt_base.ckpt",
        "HF_HUB_OFFLINE",
        "https://huggingface.co/yangnianzu/CDT/resolve/main/cdt_base.ckpt",
        "ckpt=PATH",
        "--ckpt PATH",
    ):
        assert part in message, message
    assert isinstance(err.value, FileNotFoundError)
    assert _files(hub_cache) == before  # nothing written, half or whole
    with pytest.raises(hub.ReleaseUnavailableError, match="cdt_small.ckpt"):
        cdt_fast.load_cdt("small")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(hub.ReleaseUnavailableError, match=r"cdt-fast\[hub\]"):
        hub.fetch(hub.Release("small"))


def test_random_weights_are_an_explicit_choice():
    config = CDTConfig.preset("small", name="mine", context_dim=4, unet_dim=4, out_channels=3)
    with pytest.raises(ValueError, match=r"cdt_fast.CDT\(config\)"):
        cdt_fast.load(config)
    with pytest.raises(ValueError, match="presets"):
        hub.Release("large")
    with pytest.raises(TypeError, match="revision"):
        hub.Release("base", revision="")


def _hub_error(name: str) -> BaseException:
    """huggingface_hub's exception ``name`` (skipped where this version has none), made without
    the HTTP response its constructor takes: the client's HTTP library differs between its
    versions, and fetch reads only the type."""
    from huggingface_hub import errors

    if not hasattr(errors, name):
        pytest.skip(f"this huggingface_hub has no {name}")
    cls = getattr(errors, name)
    err = cls.__new__(cls)
    err.args = (f"{name} from the Hub",)
    return err


@pytest.mark.parametrize(
    "error, reason",
    [
        ("EntryNotFoundError", "the repository holds no such file"),
        ("RemoteEntryNotFoundError", "the repository holds no such file"),
        ("RevisionNotFoundError", "the repository has no such revision"),
        ("GatedRepoError", "the repository is gated"),
        ("RepositoryNotFoundError", "no such repository on the Hub"),
        (None, "the download failed (connection reset)"),
    ],
)
def test_online_failures_name_the_file_and_the_way_round(monkeypatch, error, reason):
    """What the Hub answers online (a missing file, revision or repository, a gated repository,
    a dropped connection) becomes the one error naming the file and how to get it by hand."""
    import huggingface_hub

    raised = OSError("connection reset") if error is None else _hub_error(error)

    def download(*args, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(hub.ReleaseUnavailableError) as err:
        hub.fetch(hub.Release("small", revision="v2"))
    message = str(err.value)
    assert "\n" not in message
    for part in (
        "cdt_small.ckpt",
        "yangnianzu/CDT",
        reason,
        "https://huggingface.co/yangnianzu/CDT/resolve/v2/cdt_small.ckpt",
        "ckpt=PATH",
    ):
        assert part in message, message
