"""The README's examples run as written: its library example is executed with a tiny model and tiny data standing in
for the reader's own (`MyNet`, `train_loader`, `meta_dataset`), nothing else substituted."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(section: str) -> str:
    """The first ```python block after the README heading `section`."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no python block after '## {section}'"
    return match.group(1)


def test_the_library_example_runs_as_written():
    code = python_block("Use it in your own training loop")
    assert "MetaSampler(meta_dataset" in code and "next(meta_batches)" in code

    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    x_meta, y_meta = torch.randn(6, 4), torch.arange(6) % 3
    namespace = {
        "MyNet": lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
        "train_loader": DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),  # one batch an epoch
        "meta_dataset": TensorDataset(x_meta, y_meta),
    }
    exec(compile(code, str(README), "exec"), namespace)

    reweighter, result, meta_batches = namespace["reweighter"], namespace["result"], namespace["meta_batches"]
    assert reweighter.iteration == 120  # 120 epochs of one batch, each a full MW-Net step
    assert result.weights.shape == (16,) and bool(((result.weights > 0) & (result.weights < 1)).all())
    assert result.meta_updated and torch.isfinite(torch.tensor(result.meta_loss))
    # One meta batch per step, each a whole pass over the 6 meta samples (the 120th pass ends at the next draw).
    assert meta_batches.loader.epoch == 119 and meta_batches.state_dict()["position"] == 6
    assert namespace["scheduler"].last_epoch == 120


def test_the_licence_matches_pyproject_and_a_cpu_only_install_is_documented():
    root = README.parent
    license_ = re.search(r'^license = "([^"]+)"$', (root / "pyproject.toml").read_text(), re.M).group(1)
    text = (root / "LICENSE").read_text()
    assert license_ == "MIT" and text.startswith("MIT License\n") and "the mwnet authors" in text
    assert "Permission is hereby granted, free of charge" in text
    readme = README.read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "pip install -c constraints.txt ." in readme and "torch==" in (root / "constraints.txt").read_text()
