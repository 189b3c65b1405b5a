"""Image files decoded by Pillow into uint8 (C, H, W), with a bound on the pixels one file may declare, and
`LazyImages`, which decodes from disk on indexing (for image folders too large for memory).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mwnet.data.dataset import one_line

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# 8192 × 8192: below Pillow's own decompression-bomb threshold, so an oversized file is refused by size, before
# Pillow warns or decodes anything (a 30000 × 30000 PNG of a few KB would decode to 2.7 GB).
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26


def _open(path: str, max_pixels: int) -> Any:
    """The opened (not yet decoded) image; ValueError naming the file when it is not an image or is too large."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # the warning where it is an error
        raise ValueError(f"image too large ({one_line(exc)}): {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot decode image ({one_line(exc)}): {path}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ValueError(f"image is {width}x{height} = {width * height} pixels, more than the {max_pixels} "
                         f"allowed: {path}")
    return image


def image_geometry(first: str, image_size: int | tuple[int, int] | None, *,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[tuple[int, int], str]:
    """((H, W), mode) for a folder: `image_size`, or the first image's size; "L" for grey images, else "RGB"."""
    from PIL import Image

    with warnings.catch_warnings():  # main thread only: Pillow's bomb warning becomes the error above
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(first, max_pixels) as image:
            mode = "L" if image.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            native = (image.size[1], image.size[0])
    if image_size is None:
        return native, mode
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    whole = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)
    if len(size) != 2 or not whole or size[0] * size[1] > max_pixels:
        raise ValueError(f"image_size must be a positive int or (H, W) of at most {max_pixels} pixels, got "
                         f"{image_size!r}")
    return (int(size[0]), int(size[1])), mode


def decode(path: str, size: tuple[int, int], mode: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """One image file as a writable uint8 (C, H, W) array, converted to `mode` and resized to `size`."""
    from PIL import Image

    opened = _open(path, max_pixels)
    try:
        with opened as image:
            image = image.convert(mode)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)  # a copy: np.asarray of an image is read-only
    except (OSError, ValueError) as exc:  # a header that opened, with data that does not decode
        raise ValueError(f"cannot decode image ({one_line(exc)}): {path}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class LazyImages:
    """Images decoded from disk when indexed: `len(x)`, `x.shape`, `x[LongTensor]` → uint8 (n, C, H, W).

    For image folders too large to hold decoded in memory; every image is converted to one mode ("L" or "RGB")
    and resized to one size.
    """

    dtype = torch.uint8

    def __init__(self, paths: Sequence[str], size: tuple[int, int], mode: str, *, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.paths = [str(p) for p in paths]
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.max_pixels = max_pixels

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 1 if self.mode == "L" else 3, *self.size))

    def __len__(self) -> int:
        return len(self.paths)

    def _indices(self, index: Any) -> list[int]:
        if isinstance(index, slice):
            return list(range(len(self.paths)))[index]
        return [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]

    def _decode(self, path: str) -> np.ndarray:
        return decode(path, self.size, self.mode, self.max_pixels)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            return torch.from_numpy(self._decode(self.paths[int(index)]))
        paths = [self.paths[i] for i in self._indices(index)]
        return self.decode(paths)

    def decode(self, paths: Sequence[str]) -> torch.Tensor:
        out = torch.empty((len(paths), *self.shape[1:]), dtype=torch.uint8)
        if len(paths) <= 8 or self.workers <= 1:
            for i, p in enumerate(paths):
                out[i] = torch.from_numpy(self._decode(p))
            return out
        with ThreadPoolExecutor(self.workers) as pool:  # Pillow releases the GIL while decoding
            for i, array in enumerate(pool.map(self._decode, paths)):
                out[i] = torch.from_numpy(array)
        return out

    def subset(self, index: Any) -> LazyImages:
        """A view on some of the images (no decoding)."""
        return LazyImages([self.paths[i] for i in self._indices(index)], self.size, self.mode, workers=self.workers,
                          max_pixels=self.max_pixels)

    def load(self) -> torch.Tensor:
        """Every image, decoded into one uint8 tensor."""
        return self.decode(self.paths)


def take(x: Any, index: torch.Tensor) -> Any:
    """x[index] for tensors; a lazy view (nothing decoded) for `LazyImages`."""
    if isinstance(x, LazyImages):
        return x.subset(index)
    return x[index]
