"""Peak dense bf16 FLOP/s of known accelerators (for MFU) and a probe of the usable attention kernels.

MFU (model FLOPs utilisation) is the training FLOPs per token of the study's accounting times
the measured tokens per second, divided by the peak dense bf16 throughput of the devices used.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

PEAK_FLOPS_ENV = "ISODEPTH_PEAK_FLOPS"


@dataclass(frozen=True)
class PeakFlops:
    """Peak dense bf16 tensor-core FLOP/s of one device, with where the number comes from."""

    name: str
    flops: float
    source: str


# Datasheets list bf16 tensor throughput "with sparsity"; the dense figure is half of it. The
# figures are peaks at boost clock, so a device running at lower clocks reports a lower MFU.
# Entries are tried in order, so a more specific pattern comes before the one it contains
# (GH200 before H200, A100 before A10, L40S before L4).
_NVIDIA = "NVIDIA datasheet, dense bf16 tensor core (half the with-sparsity figure)"
PEAK_BF16_FLOPS: list[tuple[str, PeakFlops]] = [
    (r"GH200", PeakFlops("GH200", 989e12, _NVIDIA)),
    (r"H200\s*NVL", PeakFlops("H200 NVL", 835e12, _NVIDIA)),
    (r"H200", PeakFlops("H200 SXM", 989e12, _NVIDIA)),
    (r"H100\s*NVL", PeakFlops("H100 NVL", 835e12, _NVIDIA)),
    (r"H100.*PCIe", PeakFlops("H100 PCIe", 756e12, _NVIDIA)),
    (r"H100", PeakFlops("H100 SXM", 989e12, _NVIDIA)),
    (r"B200", PeakFlops("B200", 2250e12, _NVIDIA)),
    (r"A100", PeakFlops("A100", 312e12, _NVIDIA)),
    (r"L40S", PeakFlops("L40S", 362e12, _NVIDIA)),
    (r"\bL4\b", PeakFlops("L4", 121e12, _NVIDIA)),
    (r"\bA10\b", PeakFlops("A10", 125e12, _NVIDIA)),
    (r"MI300X", PeakFlops("MI300X", 1307e12, "AMD Instinct MI300X datasheet, dense bf16")),
]


def device_name(device: torch.device) -> str:
    """Marketing name of a CUDA device as the driver reports it, else the device type."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return device.type


def peak_flops(device: torch.device) -> PeakFlops | None:
    """Peak dense bf16 FLOP/s of one device, or None when the device is not in the table.

    ISODEPTH_PEAK_FLOPS (FLOP/s, e.g. 989e12) overrides the table for any device.
    """
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            raise ValueError(f"{PEAK_FLOPS_ENV}={override!r} is not a number of FLOP/s (e.g. 989e12)") from None
        return PeakFlops(device_name(device), value, f"${PEAK_FLOPS_ENV}")
    if device.type != "cuda":
        return None
    name = device_name(device)
    for pattern, peak in PEAK_BF16_FLOPS:
        if re.search(pattern, name):
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: PeakFlops | None, devices: int) -> float | None:
    """Model FLOPs utilisation over `devices` devices, or None without a known peak."""
    if peak is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak.flops * devices)


_SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def usable_attention_backends(device: torch.device, head_dim: int, dtype: torch.dtype) -> list[str]:
    """Names of the scaled_dot_product_attention backends that run a causal call of this shape.

    Each backend is tried alone on a small (1, 1, 64, head_dim) input. On CUDA, torch picks
    FlashAttention when it is in this list, and on CPU its own flash kernel.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.ones(1, 1, 64, head_dim, device=device, dtype=dtype)  # no random draw: the RNG state stays as it was
    usable = []
    for name in _SDPA_BACKENDS:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with warnings.catch_warnings(), sdpa_kernel(backend):
                warnings.simplefilter("ignore")
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        except RuntimeError:
            continue
        usable.append(name.lower())
    return usable
