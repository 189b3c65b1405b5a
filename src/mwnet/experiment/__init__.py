"""Running experiments: a config (dataclass + presets), the runner that writes a run directory, and grids of runs.

    from mwnet.experiment import resolve_config, train
    summary = train(resolve_config("fmnist-uniform-40", {"method": "ce"}), "runs/fmnist-uniform-40-ce")
    model, info = load_selected_model("runs/fmnist-uniform-40-ce")   # best_model.pt: chosen on the meta set
"""

from mwnet.experiment.config import TrainConfig, load_config, resolve_config
from mwnet.experiment.loop import evaluate
from mwnet.experiment.presets import PRESETS, list_presets
from mwnet.experiment.runner import train
from mwnet.experiment.selection import load_selected_model
from mwnet.experiment.signals import TrainingInterrupted

__all__ = ["PRESETS", "TrainConfig", "TrainingInterrupted", "evaluate", "list_presets", "load_config",
           "load_selected_model", "resolve_config", "train"]
