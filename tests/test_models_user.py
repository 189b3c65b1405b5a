"""`--model module:callable`: the user's own model, imported and called with input_shape= and num_classes=; every way
it can go wrong is one line naming the spec, exit code 2, nothing written."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from cli_runner import run
from mwnet.models import UserModelError, create_user_model

FLAGS = ["train", "--dataset", "digits", "--noise", "uniform:0.4", "--epochs", "1", "--device", "cpu", "--quiet"]

MODULE = '''
import torch
from torch import nn

calls = []

def net(input_shape, num_classes, width=16):
    calls.append((input_shape, num_classes, width))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU(),
                         nn.Linear(width, num_classes))

def not_a_module(input_shape, num_classes):
    return "a string"

class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)
    def forward(self, x):
        return {"logits": self.linear(x.flatten(1))}

def dict_output(input_shape, num_classes):
    return DictOut()

def too_few_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))

def broken(input_shape, num_classes):
    raise RuntimeError("no GPU for this\\nsecond line")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `usernets_<n>` in tmp_path, on sys.path; its name."""
    name = f"usernets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_the_callable_gets_input_shape_num_classes_and_options_and_trains_from_the_cli(user_module, tmp_path,
                                                                                       capsys):
    import importlib

    out = tmp_path / "run"
    code, _, stderr = run([*FLAGS, "--model", f"{user_module}:net", "--model-option", "width=12", "--out", str(out)],
                          capsys)
    assert code == 0, stderr
    assert importlib.import_module(user_module).calls[0] == ((1, 8, 8), 10, 12)
    assert json.loads((out / "config.json").read_text())["model"] == f"{user_module}:net"
    assert json.loads((out / "summary.json").read_text())["last_test_acc"] > 10  # it learned something
    from mwnet.experiment.selection import load_selected_model

    # Nothing a file names is imported: the user's model is built by the user, then loaded.
    with pytest.raises(ValueError, match=rf"holds your own model '{user_module}:net': build it and pass it"):
        load_selected_model(out)
    model, info = load_selected_model(out, importlib.import_module(user_module).net((1, 8, 8), 10, width=12))
    assert not model.training and info["model_options"] == {"width": 12} and info["epoch"] == 1
    code, _, stderr = run(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and stderr == (f"mwnet: error: {out / 'config.json'} names your own model '{user_module}:net': "
                                    f"give --model {user_module}:net to import it (mwnet imports no code that a file "
                                    f"names)\n")
    code, _, stderr = run(["train", "--out", str(out), "--resume", "--model", f"{user_module}:net",
                           "--model-option", "width=12", "--quiet"], capsys)
    assert code == 0, stderr


def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "cwd_nets_for_mwnet.py").write_text("from torch import nn\n"
                                                    "def tiny(input_shape, num_classes):\n"
                                                    "    return nn.Linear(input_shape[0], num_classes)\n")
    monkeypatch.chdir(tmp_path)  # the `mwnet` console script does not put the current directory on sys.path
    model = create_user_model("cwd_nets_for_mwnet:tiny", input_shape=(5,), num_classes=2)
    assert isinstance(model, torch.nn.Linear) and model.out_features == 2


@pytest.mark.parametrize(("callable_", "message"), [
    ("not_a_module", "returned a str, not a torch.nn.Module"),
    ("dict_output", "the model returns a dict; the command line needs a tensor of logits (n, 10)"),
    ("too_few_classes", "the model returns shape (2, 3) for 2 samples; expected logits (2, 10)"),
    ("broken", "calling it with (input_shape, num_classes) failed: RuntimeError: no GPU for this second line"),
    ("nothing", "has no attribute 'nothing'"),
    ("calls", "'calls' is a list, not a callable"),
])
def test_a_bad_user_model_is_one_line_exit_2_and_writes_nothing(user_module, tmp_path, capsys, callable_, message):
    out = tmp_path / "run"
    code, _, stderr = run([*FLAGS, "--model", f"{user_module}:{callable_}", "--out", str(out)], capsys)
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"mwnet: error: --model {user_module}:{callable_}: ") and message in stderr, stderr
    assert not out.exists()


def test_an_import_error_inside_the_module_is_named(tmp_path, monkeypatch):
    (tmp_path / "failing_nets_for_mwnet.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserModelError, match=r"importing 'failing_nets_for_mwnet' failed: ModuleNotFoundError: "
                                             r"No module named 'no_such_dependency_xyz'") as raised:
        create_user_model("failing_nets_for_mwnet:net", input_shape=(3,), num_classes=2)
    assert raised.value.spec == "failing_nets_for_mwnet:net" and isinstance(raised.value, ValueError)
