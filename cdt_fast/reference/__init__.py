"""The reference CDT: plain PyTorch, upstream parameter names, the oracle for every fast path."""

from .context import ContextModel
from .diffusion import DDIMSchedule, cosine_alphas_cumprod, q_sample
from .init import randomize_
from .posterior import DiagonalGaussian
from .tokenizer import CDT, CDTNetworks
from .unet import DenoisingUNet

__all__ = [
    "CDT",
    "CDTNetworks",
    "ContextModel",
    "DenoisingUNet",
    "DDIMSchedule",
    "DiagonalGaussian",
    "cosine_alphas_cumprod",
    "q_sample",
    "randomize_",
]
