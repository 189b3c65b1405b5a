"""Running experiments: a config (dataclass + presets), the runner that writes a run directory, checkpoints.

    from mwnet.experiment import resolve_config, train
    summary = train(resolve_config("fmnist-uniform-40", {"method": "ce"}), "runs/fmnist-uniform-40-ce")
"""

from mwnet.experiment.config import PRESETS, TrainConfig, list_presets, load_config, resolve_config
from mwnet.experiment.runner import TrainingInterrupted, evaluate, train

__all__ = ["PRESETS", "TrainConfig", "TrainingInterrupted", "evaluate", "list_presets", "load_config",
           "resolve_config", "train"]
