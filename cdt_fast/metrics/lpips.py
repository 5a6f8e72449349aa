"""LPIPS (Zhang et al. 2018) written in the project: VGG16 or AlexNet features + the learned linear
heads, no torchvision needed.

Weights come from files the user has: the backbone in torchvision's state-dict format
(``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``, keys ``features.N.weight``), the heads in
the ``lpips`` package's v0.1 format (``lin{k}.model.1.weight``). The ``lpips`` wheel on PyPI
(0.1.4) ships the heads, so when it is installed they are read from its folder (without importing
it: that would import torchvision). Nothing is downloaded.

The computation is the ``lpips`` package's for ``version='0.1'``: inputs in [-1, 1] shifted and
scaled per channel, each tapped feature map unit-normalised over channels (eps 1e-10), squared
difference, 1x1 head, then the spatial mean (or, with ``spatial=True``, bilinear upsampling to the
input size, as upstream's evaluation runs it).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LPIPS", "BACKBONES", "installed_heads_path"]

PathLike = Union[str, os.PathLike]

# torchvision ``features`` layers: ("conv", in, out, kernel, stride, padding) | ("relu",) |
# ("pool", kernel, stride); the index in the list is the index in the state dict. ``taps``: layer
# indices whose outputs LPIPS compares.
_VGG16 = (
    [
        ("conv", 3, 64, 3, 1, 1),
        ("relu",),
        ("conv", 64, 64, 3, 1, 1),
        ("relu",),
        ("pool", 2, 2),
        ("conv", 64, 128, 3, 1, 1),
        ("relu",),
        ("conv", 128, 128, 3, 1, 1),
        ("relu",),
        ("pool", 2, 2),
        ("conv", 128, 256, 3, 1, 1),
        ("relu",),
        ("conv", 256, 256, 3, 1, 1),
        ("relu",),
        ("conv", 256, 256, 3, 1, 1),
        ("relu",),
        ("pool", 2, 2),
        ("conv", 256, 512, 3, 1, 1),
        ("relu",),
        ("conv", 512, 512, 3, 1, 1),
        ("relu",),
        ("conv", 512, 512, 3, 1, 1),
        ("relu",),
        ("pool", 2, 2),
        ("conv", 512, 512, 3, 1, 1),
        ("relu",),
        ("conv", 512, 512, 3, 1, 1),
        ("relu",),
        ("conv", 512, 512, 3, 1, 1),
        ("relu",),
    ],
    (3, 8, 15, 22, 29),
)
_ALEXNET = (
    [
        ("conv", 3, 64, 11, 4, 2),
        ("relu",),
        ("pool", 3, 2),
        ("conv", 64, 192, 5, 1, 2),
        ("relu",),
        ("pool", 3, 2),
        ("conv", 192, 384, 3, 1, 1),
        ("relu",),
        ("conv", 384, 256, 3, 1, 1),
        ("relu",),
        ("conv", 256, 256, 3, 1, 1),
        ("relu",),
    ],
    (1, 4, 7, 9, 11),
)
BACKBONES = {"vgg": _VGG16, "alex": _ALEXNET}
BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}

# The lpips package's input normalisation (ScalingLayer), for inputs in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _build_features(layers: Sequence[Tuple]) -> nn.Sequential:
    modules: List[nn.Module] = []
    for spec in layers:
        if spec[0] == "conv":
            _, cin, cout, k, s, p = spec
            modules.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif spec[0] == "relu":
            modules.append(nn.ReLU())
        else:
            modules.append(nn.MaxPool2d(spec[1], stride=spec[2]))
    return nn.Sequential(*modules)


def installed_heads_path(net: str = "vgg") -> Optional[Path]:
    """The v0.1 heads file of the installed ``lpips`` package, or None (the package is located,
    not imported)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


class LPIPS(nn.Module):
    """``forward(a, b)``: images [N, 3, H, W] in [-1, 1] (``normalize=True``: in [0, 1]) -> [N]
    distances; ``spatial=True`` returns the [N, 1, H, W] map instead.

    A fresh ``LPIPS(net)`` has random weights (for tests); :meth:`from_pretrained` loads files.
    Parameters are frozen; gradients flow to the inputs.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"net must be one of {sorted(BACKBONES)}, got {net!r}")
        layers, taps = BACKBONES[net]
        self.net_name = net
        self.features = _build_features(layers[: max(taps) + 1])
        self.taps = tuple(taps)
        channels = [layers[i - 1][2] for i in taps]  # each tap follows a conv + relu
        self.lin = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    # -- weights -----------------------------------------------------------------------------
    def load_backbone(self, state_dict: Dict[str, torch.Tensor], source: str = "backbone") -> None:
        """Load torchvision-format weights (``features.N.weight`` / ``.bias``; other keys, e.g.
        the classifier, are ignored)."""
        own = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        missing = sorted(k for k in own if k not in state_dict)
        bad = sorted(k for k in own if k in state_dict and state_dict[k].shape != own[k].shape)
        if missing or bad:
            raise ValueError(
                f"{source} is not a torchvision {self.net_name} state dict: "
                f"missing {missing[:4]}, mis-shaped {bad[:4]}"
            )
        self.features.load_state_dict({k[len("features.") :]: state_dict[k].float() for k in own})

    def load_heads(self, state_dict: Dict[str, torch.Tensor], source: str = "heads") -> None:
        """Load the linear heads from the lpips package's format (``lin{k}.model.1.weight``)."""
        weights = {}
        for k, lin in enumerate(self.lin):
            key = f"lin{k}.model.1.weight"
            if key not in state_dict or state_dict[key].shape != lin.weight.shape:
                raise ValueError(
                    f"{source} is not an LPIPS v0.1 {self.net_name} head file "
                    f"(needs {key} of shape {list(lin.weight.shape)})"
                )
            weights[f"{k}.weight"] = state_dict[key].float()
        self.lin.load_state_dict(weights)

    @classmethod
    def from_pretrained(
        cls, backbone: Optional[PathLike], heads: Optional[PathLike] = None, net: str = "vgg"
    ) -> "LPIPS":
        """LPIPS with ImageNet ``backbone`` weights (torchvision format) and the v0.1 ``heads``
        (default: the installed ``lpips`` package's file)."""
        from ..checkpoint import read_state_dict

        if backbone is None:
            raise FileNotFoundError(
                f"LPIPS needs ImageNet {net} weights in torchvision's format, which cdt_fast does "
                f"not ship or download: get {BACKBONE_FILES[net]} (the torchvision model zoo file) "
                f"and pass its path (--lpips-backbone PATH); or train with --lpips-weight 0"
            )
        if heads is None:
            heads = installed_heads_path(net)
            if heads is None:
                raise FileNotFoundError(
                    f"LPIPS heads not found: pip install lpips==0.1.4 (its wheel ships "
                    f"weights/v0.1/{net}.pth) or pass the heads file (--lpips-heads PATH)"
                )
        model = cls(net)
        model.load_backbone(read_state_dict(backbone), str(backbone))
        model.load_heads(read_state_dict(heads), str(heads))
        return model

    # -- distance ----------------------------------------------------------------------------
    def tapped_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, spatial: bool = False, normalize: bool = False
    ) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two [N, 3, H, W] images of the same shape, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        if normalize:
            a, b = 2 * a - 1, 2 * b - 1
        dtype = self.lin[0].weight.dtype
        total = 0
        for fa, fb, lin in zip(
            self.tapped_features(a.to(dtype)), self.tapped_features(b.to(dtype)), self.lin
        ):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = lin((fa - fb) ** 2)
            if spatial:
                total = total + F.interpolate(
                    d, size=a.shape[2:], mode="bilinear", align_corners=False
                )
            else:
                total = total + d.mean(dim=(2, 3))
        return total if spatial else total.reshape(-1)
