"""Shared fixtures: the tiny upstream-parity configurations and their weights, and the engines
the engine tests compare with the reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tests never touch the network: the Hugging Face client (cdt_fast.hub, diffusers, transformers)
# reads its cache only, in this process and in the subprocesses tests start.
os.environ["HF_HUB_OFFLINE"] = "1"

from .helpers import INTERPRETED, use_triton_interpreter

# Before any test module imports triton: the one place where the interpreter is switched on.
use_triton_interpreter()

import pytest
import torch

from cdt_fast import CDT, CDTConfig

from .program_order import ORDERS
from .program_order import program_order as reorder_programs

FIXTURES = Path(__file__).parent / "fixtures"
PRESETS = ("base", "small")


def tiny_config(preset: str, **overrides) -> CDTConfig:
    """The configurations the upstream fixtures were computed with (tests/fixtures/README.md)."""
    width = json.loads((FIXTURES / "meta.json").read_text())["dim"]
    out_channels = {"base": width, "small": 3}[preset]
    values = dict(context_dim=width, unet_dim=width, latent_dim=width, out_channels=out_channels)
    values.update(overrides)
    return CDTConfig.preset(preset, **values)


@pytest.fixture(scope="session")
def upstream_io():
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / "io.safetensors"))


def upstream_state_dict(preset: str):
    from safetensors.torch import load_file

    return load_file(str(FIXTURES / f"{preset}_state_dict.safetensors"))


def upstream_cdt(preset: str) -> CDT:
    """A fresh tiny CDT, in eval mode, holding the fixture's upstream weights."""
    model = CDT(tiny_config(preset))
    model.load_state_dict(upstream_state_dict(preset), strict=True)
    return model.eval()


@pytest.fixture(scope="session", params=PRESETS)
def preset(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def upstream_model(preset) -> CDT:
    """A tiny CDT holding the fixture's upstream weights (read-only: do not mutate in tests)."""
    return upstream_cdt(preset)


def pytest_addoption(parser):
    parser.addoption(
        "--program-order",
        default="grid",
        help="comma-separated program orders for Triton interpreter launches, from "
        f"{', '.join(ORDERS)} (tests/program_order.py); with several, every test runs once per "
        "order. Default: grid (the interpreter's own).",
    )
    parser.addoption(
        "--program-order-seed",
        type=int,
        default=0,
        help="seed of the shuffled program order (default 0)",
    )


def pytest_configure(config):
    _session_orders(config)  # a bad --program-order stops the run before collection


def _session_orders(config) -> list:
    orders = [o.strip() for o in config.getoption("--program-order").split(",") if o.strip()]
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise pytest.UsageError(f"--program-order takes orders from {ORDERS}, got {bad or orders}")
    return orders


def _parametrizes(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = names.split(",") if isinstance(names, str) else names
        if name in (n.strip() for n in names):
            return True
    return False


def pytest_generate_tests(metafunc):
    # Several session orders: every test not pinning its own runs once per order.
    orders = _session_orders(metafunc.config)
    if (
        len(orders) > 1
        and "program_order" in metafunc.fixturenames
        and not _parametrizes(metafunc, "program_order")
    ):
        metafunc.parametrize("program_order", orders, indirect=True)


@pytest.fixture(autouse=True)
def program_order(request):
    """The order in which Triton interpreter launches run their programs during this test: the
    test's own (``@pytest.mark.parametrize("program_order", [...], indirect=True)``), else the
    session's (``--program-order``). Only the interpreter is reordered: compiled kernels run in
    the GPU's own order, whatever the test asks."""
    order = getattr(request, "param", None) or _session_orders(request.config)[0]
    if order == "grid" or not INTERPRETED:
        yield order
        return
    with reorder_programs(order, seed=request.config.getoption("--program-order-seed")):
        yield order


@pytest.fixture(scope="module")
def engines():
    """Reference and fp32 torch-backend engine per preset (shared, read-only)."""
    from cdt_fast.engine import accelerate

    out = {}
    for preset in PRESETS:
        ref = upstream_cdt(preset)
        out[preset] = (ref, accelerate(ref, backend="torch"))
    return out


def random_video(b=1, t=9, h=32, w=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((b, 3, t, h, w), generator=g) * 2 - 1


def random_latent(model, b=1, t=3, h=4, w=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, model.config.latent_dim, t, h, w), generator=g)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test shapes are tiny: intra-op threads gain nothing, and on a busy 2-core runner their
    OpenMP barriers can stall each op. Tests about threading set the count themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache in a temporary folder, read offline: what HF_HUB_CACHE and
    HF_HUB_OFFLINE=1 set before the process started give (huggingface_hub reads both when it is
    first imported, so its constants are set too). Fill it with
    :func:`tests.helpers.put_in_hub_cache`."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
