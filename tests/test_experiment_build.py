"""`check_buildable`: what `build` would refuse, found without building (every method, on the meta device), and a
model too large for the device refused before it is allocated."""

from __future__ import annotations

import pytest
import torch

from mwnet.data import load_dataset
from mwnet.experiment.build import build, check_buildable
from mwnet.experiment.config import resolve_config
from mwnet.methods import list_methods


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("method", list_methods())
def test_every_method_passes_the_check_that_it_builds(method, digits, required_options):
    config = resolve_config(None, {"dataset": "digits", "model": "mlp", "device": "cpu", "method": method,
                                   **required_options(method)})
    check_buildable(config, digits)
    assert build(config, torch.device("cpu"), digits).method.name == method


@pytest.mark.parametrize(("overrides", "message"), [
    ({"meta_per_class": 500}, "meta set asks for 500 samples"),
    ({"model_options": {"depth": 3}}, "model 'mlp' got unexpected option(s): depth"),
    # 75·2³¹ + 10 parameters (64 inputs, 10 classes): far beyond any machine's memory, and never allocated
    ({"model_options": {"hidden": [2**31]}}, "model 'mlp' has 161,061,273,610 parameters: training it needs"),
    ({"method": "mwnet", "meta_optimizer": "sgd", "meta_momentum": 0.0}, "meta_nesterov needs meta_momentum > 0"),
])
def test_what_build_refuses_the_check_refuses(digits, overrides, message):
    config = resolve_config(None, {"dataset": "digits", "model": "mlp", "device": "cpu", **overrides})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_buildable(config, digits)
