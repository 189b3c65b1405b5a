"""Mixed precision for the step: which passes run under autocast, and what always stays in float32.

Every forward of the classifier (the first forward, the meta forward at ŵ, the dual or finite-difference passes)
runs under `torch.autocast` with the chosen dtype; the losses are computed from float32 logits; the weight net,
the sensitivities' use and every optimizer step stay in float32 (the master weights are the user's float32
parameters). "fp16" needs a gradient scaler and therefore CUDA; "bf16" works on CPU and CUDA.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from mwnet.inputs import map_tensors

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    """ValueError unless `precision` is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_device(precision: str, device: torch.device) -> None:
    """fp16 training needs loss scaling, which the step does on CUDA only."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (gradient scaling); on {device.type} use 'bf16'")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region for one forward of the classifier (a no-op for "fp32")."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def full_precision(output: Any) -> Any:
    """Logits in float32 before a loss: autocast leaves a half-precision Linear output in half precision (every
    tensor of a dict or tuple output too)."""
    return map_tensors(lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, output)
