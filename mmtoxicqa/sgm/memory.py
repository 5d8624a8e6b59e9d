"""The calibration's memory knobs: the pooled matrix's dtype and the device that rates the neurons.

The pooled matrix holds one row per calibration item and one column per neuron (N x M): for
LLaVA-1.5-7B (32 layers x 11008 neurons) on the 940-item split, 1.32 GB in float32, 0.66 GB in
float16 / bfloat16. It lives in CPU memory; the AUROCs are computed in column blocks on the
``auroc_device`` (one block copied there at a time, :func:`mmtoxicqa.sgm.auroc.block_bytes`).
"""

from __future__ import annotations

import torch

from mmtoxicqa.core.errors import MMToxError
from mmtoxicqa.modeling.loading import check_device

POOL_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
POOL_DTYPE_CHOICES = ("float32", "float16", "bfloat16")


def parse_pool_dtype(value) -> torch.dtype:
    """``float32`` (default), ``float16`` or ``bfloat16`` (or the torch dtype) as a torch dtype."""
    if value is None or value == "":
        return torch.float32
    if isinstance(value, torch.dtype):
        if value in POOL_DTYPES.values():
            return value
        raise MMToxError(f"pool dtype {value} is not supported; use one of {', '.join(POOL_DTYPE_CHOICES)}")
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in POOL_DTYPES:
        raise MMToxError(f"pool dtype {value!r} is not supported; use one of {', '.join(POOL_DTYPE_CHOICES)}")
    return POOL_DTYPES[key]


def pool_dtype_name(value) -> str:
    return str(parse_pool_dtype(value)).removeprefix("torch.")


def check_auroc_device(value) -> torch.device | None:
    """``None`` (where the model computes) or a device this machine has, e.g. ``cpu``, ``cuda``, ``cuda:1``."""
    if value is None or value == "":
        return None
    return check_device(value, "auroc_device")


def pooled_bytes(items: int, neurons: int, dtype) -> int:
    """Bytes of the pooled matrix for ``items`` calibration items and ``neurons`` neurons."""
    return int(items) * int(neurons) * torch.empty(0, dtype=parse_pool_dtype(dtype)).element_size()
