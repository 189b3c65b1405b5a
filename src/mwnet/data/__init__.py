"""Data for mwnet: official-format sources, the paper's corruption protocols, the clean meta set, device loaders.

    ds = load_dataset("fashion-mnist")
    split = make_split(ds, noise="flip2:0.4", num_meta=1000, seed=1)
    loader = BatchLoader(split.x_train, split.y_train, device="cuda", mean=split.mean, std=split.std)
"""

from mwnet.data.corruption import (
    NOISE_KINDS,
    NoiseSpec,
    corrupt_labels,
    empirical_transition_matrix,
    noise_transition_matrix,
    parse_noise,
)
from mwnet.data.dataset import Dataset
from mwnet.data.images import LazyImages
from mwnet.data.loaders import BatchLoader, MetaSampler, crop_flip, draw_augmentation
from mwnet.data.sources import list_datasets, load_dataset
from mwnet.data.splits import (
    Split,
    UnverifiedMetaSetError,
    carve_meta_set,
    long_tail_counts,
    make_split,
    meta_counts,
    summarize_split,
)

__all__ = [
    "NOISE_KINDS",
    "BatchLoader",
    "Dataset",
    "LazyImages",
    "MetaSampler",
    "NoiseSpec",
    "Split",
    "UnverifiedMetaSetError",
    "carve_meta_set",
    "corrupt_labels",
    "crop_flip",
    "draw_augmentation",
    "empirical_transition_matrix",
    "list_datasets",
    "load_dataset",
    "long_tail_counts",
    "make_split",
    "meta_counts",
    "noise_transition_matrix",
    "parse_noise",
    "summarize_split",
]
