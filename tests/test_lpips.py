"""LPIPS against a hand-written reference of the lpips package's computation, on fixed random
weights stored in torchvision / lpips file formats."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdt_fast.metrics import LPIPS, installed_heads_path
from cdt_fast.train import CDTLoss, LossWeights

# Layer plans written out independently of cdt_fast.metrics.lpips: conv (index, stride, padding),
# "M<k>,<s>" max-pool, and the layer indices whose ReLU outputs are compared.
VGG = dict(
    convs={
        0: 64,
        2: 64,
        5: 128,
        7: 128,
        10: 256,
        12: 256,
        14: 256,
        17: 512,
        19: 512,
        21: 512,
        24: 512,
        26: 512,
        28: 512,
    },
    pools={4: (2, 2), 9: (2, 2), 16: (2, 2), 23: (2, 2)},
    taps=[3, 8, 15, 22, 29],
    kernel={},
    stride={},
    padding={},
    last=29,
)
ALEX = dict(
    convs={0: 64, 3: 192, 6: 384, 8: 256, 10: 256},
    pools={2: (3, 2), 5: (3, 2)},
    taps=[1, 4, 7, 9, 11],
    kernel={0: 11, 3: 5},
    stride={0: 4},
    padding={0: 2, 3: 2},
    last=11,
)


def random_files(tmp_path, plan, seed=0):
    g = torch.Generator().manual_seed(seed)
    backbone, cin = {}, 3
    for i, cout in sorted(plan["convs"].items()):
        k = plan["kernel"].get(i, 3)
        backbone[f"features.{i}.weight"] = (
            torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
        )
        backbone[f"features.{i}.bias"] = 0.1 * torch.randn(cout, generator=g)
        cin = cout
    backbone["classifier.0.weight"] = torch.zeros(
        2, 2
    )  # torchvision files carry the classifier too
    chans = [plan["convs"][t - 1] for t in plan["taps"]]
    heads = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(chans)
    }
    torch.save(backbone, tmp_path / "backbone.pth")
    torch.save(heads, tmp_path / "heads.pth")
    return backbone, heads


def reference_lpips(backbone, heads, plan, a, b, spatial=False):
    shift = torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)

    def feats(x):
        h, out = (x - shift) / scale, []
        for i in range(plan["last"] + 1):
            if i in plan["convs"]:
                h = F.conv2d(
                    h,
                    backbone[f"features.{i}.weight"],
                    backbone[f"features.{i}.bias"],
                    stride=plan["stride"].get(i, 1),
                    padding=plan["padding"].get(i, 1),
                )
            elif i in plan["pools"]:
                h = F.max_pool2d(h, *plan["pools"][i])
            else:
                h = torch.relu(h)
            if i in plan["taps"]:
                out.append(h)
        return out

    total = 0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        na = fa / (torch.sqrt((fa**2).sum(1, keepdim=True)) + 1e-10)
        nb = fb / (torch.sqrt((fb**2).sum(1, keepdim=True)) + 1e-10)
        d = ((na - nb) ** 2 * heads[f"lin{k}.model.1.weight"]).sum(1, keepdim=True)
        if spatial:
            total = total + F.interpolate(d, size=a.shape[2:], mode="bilinear", align_corners=False)
        else:
            total = total + d.mean((2, 3), keepdim=True)
    return total if spatial else total.flatten()


PLANS = {"vgg": VGG, "alex": ALEX}


@pytest.fixture(scope="module", params=["vgg", "alex"])
def weights(request, tmp_path_factory):
    """(net, torchvision-format backbone, lpips-format heads, LPIPS loaded from those files)."""
    net = request.param
    folder = tmp_path_factory.mktemp(net)
    backbone, heads = random_files(folder, PLANS[net])
    model = LPIPS.from_pretrained(folder / "backbone.pth", folder / "heads.pth", net=net)
    return net, backbone, heads, model


@pytest.mark.parametrize("spatial", [False, True])
def test_lpips_matches_reference(weights, spatial):
    net, backbone, heads, model = weights
    plan, size = PLANS[net], {"vgg": (32, 40), "alex": (67, 64)}[net]
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, *size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    got = model(a, b, spatial=spatial)
    want = reference_lpips(backbone, heads, plan, a, b, spatial=spatial)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert (got > 0).all() if not spatial else got.mean() > 0
    assert torch.allclose(model(a, a), torch.zeros(2), atol=1e-6)
    # [0, 1] inputs with normalize=True are the same images
    torch.testing.assert_close(
        model((a + 1) / 2, (b + 1) / 2, spatial=spatial, normalize=True), got
    )


def test_lpips_gives_gradients_to_inputs_only():
    model = LPIPS("vgg")
    a = torch.rand(1, 3, 16, 16, requires_grad=True)
    model(a, torch.rand(1, 3, 16, 16)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_missing_weights_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="--lpips-weight 0"):
        LPIPS.from_pretrained(None)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg state dict"):
        LPIPS.from_pretrained(tmp_path / "bad.pth", tmp_path / "bad.pth")
    from cdt_fast import CDT, CDTConfig

    model = CDT(CDTConfig.small(context_dim=4, unet_dim=4, latent_dim=4))
    with pytest.raises(ValueError, match="LPIPS weight to 0"):
        CDTLoss(model, LossWeights(lpips=0.1))
    CDTLoss(model, LossWeights(lpips=0.0))  # trains without LPIPS


def test_heads_from_installed_lpips_package():
    path = installed_heads_path("vgg")
    if path is None:
        pytest.skip("the lpips package is not installed")
    model = LPIPS("vgg")
    model.load_heads(torch.load(path, map_location="cpu", weights_only=True), str(path))
    assert all((lin.weight >= 0).all() for lin in model.lin)  # the published heads are non-negative
