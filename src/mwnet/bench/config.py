"""What the speed benchmark measures: models, rows, batch, rounds, device; checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mwnet import models
from mwnet.bench.runners import ALL_METHODS
from mwnet.precision import PRECISIONS

# Input shape (channels, side) each benchmarked model is timed at; wrn28_10 joins the defaults only on CUDA.
MODEL_INPUTS: dict[str, tuple[int, int]] = {"cnn": (1, 28), "resnet32": (3, 32), "wrn28_10": (3, 32)}
DEFAULT_MODELS: tuple[str, ...] = ("cnn", "resnet32")
GPU_MODELS: tuple[str, ...] = ("wrn28_10",)


@dataclass
class SpeedConfig:
    """What `run_speed_benchmark` measures.

    Attributes:
        models: model names (keys of MODEL_INPUTS) [cnn, resnet32].
        methods: rows to time; "ce" is always timed, since every figure is a ratio to it; a peer row whose package
            is missing is skipped with a note [all of ALL_METHODS: METHODS, then the peers].
        batch_size: train batch size [100].
        meta_batch_size: meta batch size [batch_size].
        steps: timed rounds (one step of every method per round) [15].
        warmup: untimed rounds before them [5].
        interval: k of the meta_interval row; that row is timed over whole cycles of k steps [5].
        device: "cpu" or "cuda" (resolve "auto" with `resolve_device` first) ["cpu"].
        precision: "fp32", or "bf16" / "fp16" autocast (fp16 on CUDA only), as `MetaReweighter(precision=...)`;
            what each row does with it is in `build_runners` ["fp32"].
        threads: torch intra-op threads [the cores this process may use].
        seed: seed of the model initialisation and the random batches [0].
        memory: measure peak memory in a separate pass after the timing [True].
        profile_model: model whose default-mode and official steps are broken into phases, or None [resnet32].
        profile_steps: profiled steps of the phase table [5].
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    methods: tuple[str, ...] = ALL_METHODS
    batch_size: int = 100
    meta_batch_size: int | None = None
    steps: int = 15
    warmup: int = 5
    interval: int = 5
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    seed: int = 0
    memory: bool = True
    profile_model: str | None = "resnet32"
    profile_steps: int = 5

    def validate(self) -> None:
        """Raise ValueError naming the first bad value; call before any output is written."""
        known = set(MODEL_INPUTS) & set(models.list_models())
        if not self.models:
            raise ValueError("no model to benchmark")
        for name in self.models:
            if name not in known:
                raise ValueError(f"unknown benchmark model {name!r}; choose from {', '.join(sorted(known))}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models repeated: {', '.join(self.models)}")
        for method in self.methods:
            if method not in ALL_METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
        for what, value, low in (("batch size", self.batch_size, 1), ("steps", self.steps, 1),
                                 ("warm-up steps", self.warmup, 0), ("interval", self.interval, 1),
                                 ("seed", self.seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
        for what, value in (("meta batch size", self.meta_batch_size), ("threads", self.threads),
                            ("profile steps", self.profile_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp16" and self.device != "cuda":
            raise ValueError(f"precision 'fp16' needs CUDA (gradient scaling); on {self.device} use 'bf16'")
        if self.profile_model is not None and self.profile_model not in known:
            raise ValueError(f"unknown profile model {self.profile_model!r}; choose from {', '.join(sorted(known))}")


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when available, else "cpu"; other values pass through (checked by `SpeedConfig`)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
