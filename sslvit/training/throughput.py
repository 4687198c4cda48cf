"""Model FLOPs utilisation: achieved training FLOP/s over the accelerator's bf16 dense peak."""

from __future__ import annotations

import torch
from accelerate import Accelerator

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on the device name.
BF16_PEAK = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def bf16_peak(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak for a CUDA device name, or None when unknown."""
    for key, value in BF16_PEAK.items():
        if key in device_name:
            return value
    return None


def mfu(flops_per_image: int | None, images_per_s: float, accelerator: Accelerator) -> float | None:
    """Fraction of peak used by training (forward + backward = 3x forward FLOPs); None off GPU."""
    if not flops_per_image or accelerator.device.type != "cuda":
        return None
    peak = bf16_peak(torch.cuda.get_device_name(accelerator.device))
    if peak is None:
        return None
    return 3 * flops_per_image * images_per_s / (peak * accelerator.num_processes)
