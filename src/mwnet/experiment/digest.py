"""A checksum of a checkpoint's *content*: every tensor's bytes, dtype and shape, every number, string and key.

`save_checkpoint` stores it inside the checkpoint, `load_checkpoint` recomputes it: a file damaged in a way that
still loads (a flipped bit in a tensor, a truncated copy repaired by a zip tool, an edited value) is refused with
one line instead of resuming a silently different run. It is computed on the values, not on the file's bytes, so
it does not depend on how torch lays the archive out, and it travels inside the file it protects.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def content_digest(value: Any) -> str:
    """The SHA-256 (hex) of `value`: nested dicts (in order), lists, tuples, tensors and plain scalars."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}:".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    else:  # None, bool, int, float (repr is exact), str, torch.dtype, torch.Size, ...
        digest.update(f"{type(value).__name__}={value!r};".encode())
