"""What a GPU can do at most: dense peak TFLOP/s and peak memory bandwidth, by device name.

The one table of each for every benchmark: the model benchmark's ``pct_peak`` column divides by
:func:`peak_tflops`, the op microbenchmarks' ``%peak_bw`` and ``pct_bf16_peak`` by
:func:`peak_bandwidth_tbps` and :func:`peak_tflops`. A device name from
``torch.cuda.get_device_name()`` (``"NVIDIA H100 80GB HBM3"``, ``"NVIDIA A100-SXM4-80GB"``) is
matched by its words (split at anything not a letter or digit, case ignored): the first rule
whose words all occur in the name wins, so the specific variants come first, and ``GH200`` is
never read as ``H200``.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import FrozenSet, Mapping, Optional, Sequence, Tuple, TypeVar

__all__ = ["PEAK_TFLOPS", "peak_tflops", "peak_bandwidth_tbps"]

T = TypeVar("T")
_Rule = Tuple[Tuple[str, ...], str, T]

# Dense (no structured sparsity) peak TFLOP/s: bf16/fp16 and tf32 on tensor cores with fp32
# accumulation, fp32 on CUDA cores. Hopper and Ampere figures are the architecture whitepapers'
# ("NVIDIA H100 Tensor Core GPU Architecture": H100 SXM5 989.4 / 494.7 / 66.9, H100 PCIe 756 /
# 378 / 51.2, the PCIe bf16 figure being twice its tf32 one, where halving the datasheet's 1,513
# sparse TFLOP/s would give 756.5; "NVIDIA A100 Tensor Core GPU Architecture"), the others the
# product datasheets' sparse figures halved. H200, GH200 and H800 have H100 SXM5's SMs and
# clocks, A800 A100's.
_HOPPER_SXM = {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}
_HOPPER_NVL = {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0}
_AMPERE = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
_TFLOPS: Tuple[_Rule, ...] = (
    (("GH200",), "NVIDIA GH200", _HOPPER_SXM),
    (("H200", "NVL"), "NVIDIA H200 NVL", _HOPPER_NVL),
    (("H200",), "NVIDIA H200 SXM", _HOPPER_SXM),
    (("H100", "NVL"), "NVIDIA H100 NVL", _HOPPER_NVL),
    (
        ("H100", "PCIE"),
        "NVIDIA H100 PCIe",
        {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    ),
    (("H100",), "NVIDIA H100 SXM", _HOPPER_SXM),
    (("H800",), "NVIDIA H800 SXM", _HOPPER_SXM),
    (("A100",), "NVIDIA A100", _AMPERE),
    (("A800",), "NVIDIA A800", _AMPERE),
    (("A10",), "NVIDIA A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (("L40S",), "NVIDIA L40S", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    (("L40",), "NVIDIA L40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    (("L4",), "NVIDIA L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (
        ("RTX", "4090"),
        "NVIDIA GeForce RTX 4090",
        {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
    ),
)

# Peak DRAM (HBM/GDDR) bandwidth, TB/s, from the product datasheets.
_BANDWIDTH: Tuple[_Rule, ...] = (
    (("H200",), "NVIDIA H200", 4.8),  # SXM and NVL alike
    (("H100", "NVL"), "NVIDIA H100 NVL", 3.9),
    (("H100", "PCIE"), "NVIDIA H100 PCIe", 2.0),
    (("H100",), "NVIDIA H100 SXM", 3.35),  # "NVIDIA H100 80GB HBM3"
    (("A100", "80GB", "PCIE"), "NVIDIA A100 80GB PCIe", 1.935),
    (("A100", "80GB"), "NVIDIA A100 SXM4 80GB", 2.039),
    (("A100",), "NVIDIA A100 40GB", 1.555),  # SXM4 and PCIe
    (("A10G",), "NVIDIA A10G", 0.6),
    (("A10",), "NVIDIA A10", 0.6),
    (("L40S",), "NVIDIA L40S", 0.864),
    (("L40",), "NVIDIA L40", 0.864),
    (("L4",), "NVIDIA L4", 0.3),
    (("RTX", "4090"), "NVIDIA GeForce RTX 4090", 1.008),
    (("RTX", "3090"), "NVIDIA GeForce RTX 3090", 0.936),
)

PEAK_TFLOPS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {label: MappingProxyType(dict(peaks)) for _, label, peaks in _TFLOPS}
)


def _words(name: str) -> FrozenSet[str]:
    return frozenset(w for w in re.split(r"[^A-Z0-9]+", name.upper()) if w)


def _match(rules: Sequence[_Rule], name: Optional[str]) -> Optional[_Rule]:
    if not name:
        return None
    words = _words(name)
    return next((rule for rule in rules if words.issuperset(rule[0])), None)


def peak_tflops(gpu_name: Optional[str]) -> Tuple[Optional[str], Optional[Mapping[str, float]]]:
    """(table label, {bf16, fp16, tf32, fp32: TFLOP/s}) for a CUDA device name, or (None, None)."""
    rule = _match(_TFLOPS, gpu_name)
    return (None, None) if rule is None else (rule[1], PEAK_TFLOPS[rule[1]])


def peak_bandwidth_tbps(gpu_name: Optional[str]) -> Optional[float]:
    """Peak memory bandwidth (TB/s) of a CUDA device name, or None when unknown."""
    rule = _match(_BANDWIDTH, gpu_name)
    return None if rule is None else rule[2]
