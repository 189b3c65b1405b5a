"""A new user's first hour, end to end, with nothing silently substituted (issue 10):

1. their own image folder, labels in a noisy CSV with a `trusted` column, trained from the command line: the meta
   set comes from the trusted rows and says so, and every row of suspects.csv names a real file and its CSV label;
2. their own .npz with a shipped clean meta set (x_meta) and their own model with a frozen-BN backbone
   (`--model module:callable`): the whole meta set is used, the frozen statistics never move, and suspects.csv rows
   are rows of their x;
3. their own model returning a dict, in their own loop through the library.
Tiny data, one or two epochs: a few seconds.
"""

from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cli_runner import run

CLASSES = ("boot", "coat", "shirt")
COMMON = ["--epochs", "2", "--batch-size", "16", "--meta-batch-size", "9", "--device", "cpu"]


def pattern(c: int, rng: np.random.Generator) -> np.ndarray:
    """An 8×8 grey image of class c: a bright 3×8 band at rows 3c…3c+2 (c < 3), plus noise."""
    image = rng.integers(0, 60, (8, 8))
    image[min(3 * c, 5): min(3 * c, 5) + 3] += 180
    return image.astype(np.uint8)


def stdout_lines(stdout: str) -> list[str]:
    return stdout.strip().splitlines()


def test_own_image_folder_with_a_noisy_csv_and_a_trusted_column(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "mydata"
    (root / "images").mkdir(parents=True)
    rows, truth = [], {}
    for i in range(60):
        c = i % 3
        path = f"images/{i:03d}.png"
        Image.fromarray(pattern(c, rng), mode="L").save(root / path)
        trusted = i < 15  # five verified rows per class
        given = c if trusted or rng.random() > 0.3 else (c + 1) % 3
        rows.append(f"{path},{CLASSES[given]},{int(trusted)}")
        truth[path] = c
    (root / "noisy_labels.csv").write_text("path,label,trusted\n" + "\n".join(rows) + "\n")

    # Without the trusted column, the meta set would come from unverified labels: refused, not done silently.
    unverified = tmp_path / "unverified.csv"
    unverified.write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    code, _, stderr = run(["train", "--dataset", f"folder:{root}", "--labels-csv", str(unverified), *COMMON,
                           "--out", str(tmp_path / "refused")], capsys)
    assert code == 2 and "has no trusted meta set" in stderr and "--meta-from-unverified" in stderr
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "run"
    code, stdout, stderr = run(["train", "--dataset", f"folder:{root}", "--meta-per-class", "3", "--model", "mlp",
                                *COMMON, "--out", str(out)], capsys)
    assert code == 0, stderr
    assert stdout_lines(stdout)[0] == (f"data: folder:{root}, 39 training samples, test 12; meta set of 9: carved "
                                       f"from the trusted column of {root / 'noisy_labels.csv'}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta_source"] == f"carved from the trusted column of {root / 'noisy_labels.csv'}"
    assert summary["suspects_score"] in ("weight", "loss") and summary["selected_model"] == "best_model.pt"
    with open(out / "suspects.csv", newline="") as handle:
        suspects = list(csv.DictReader(handle))
    given_by_path = {r.split(",")[0]: CLASSES.index(r.split(",")[1]) for r in rows}
    assert len(suspects) == 39 and len({r["source_id"] for r in suspects}) == 39
    for row in suspects:  # every row maps back to the user's file and the label their CSV gives it
        assert (root / row["source_id"]).is_file()
        assert int(row["given_label"]) == given_by_path[row["source_id"]]
    # The figures say that the classes are the labels as given (nobody knows the truth here).
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["classes_by"] == "given"


FROZEN_BN_MODULE = '''
import torch
from torch import nn


def frozen_bn_net(input_shape, num_classes):
    """A pretrained-style backbone whose batch norm is frozen (eval mode), and a new head."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Flatten())
    with torch.no_grad():  # "pretrained" statistics, which training must not move
        backbone[1].running_mean.fill_(0.25)
        backbone[1].running_var.fill_(2.0)
    backbone.eval()
    return nn.Sequential(backbone, nn.Linear(4 * input_shape[1] * input_shape[2], num_classes))
'''


def test_own_npz_with_x_meta_and_a_frozen_bn_backbone_from_the_command_line(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    y_meta = np.arange(45) % 3  # more than the default 10 per class: all of it must be used
    y_noisy = np.where(rng.random(60) < 0.3, (y + 1) % 3, y)
    x = np.stack([pattern(c, rng) for c in y])[:, None]
    arrays = {"x": x, "y": y_noisy, "x_meta": np.stack([pattern(c, rng) for c in y_meta])[:, None],
              "y_meta": y_meta, "x_test": np.stack([pattern(c, rng) for c in y[:30]])[:, None], "y_test": y[:30]}
    np.savez(tmp_path / "mine.npz", **arrays)
    (tmp_path / "my_frozen_nets.py").write_text(textwrap.dedent(FROZEN_BN_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))

    out = tmp_path / "run"
    code, stdout, stderr = run(["train", "--dataset", f"arrays:{tmp_path / 'mine.npz'}", "--model",
                                "my_frozen_nets:frozen_bn_net", *COMMON, "--out", str(out)], capsys)
    assert code == 0, stderr
    assert stdout_lines(stdout)[0] == (f"data: arrays:{tmp_path / 'mine.npz'}, 60 training samples, test 30; meta "
                                       f"set of 45: x_meta in {tmp_path / 'mine.npz'} (all 45)")
    assert json.loads((out / "summary.json").read_text())["meta_size"] == 45

    # The backbone's frozen statistics did not move in two epochs of training and evaluation; the head trained.
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert torch.equal(state["0.1.running_mean"], torch.full((4,), 0.25))
    assert torch.equal(state["0.1.running_var"], torch.full((4,), 2.0))
    assert int(state["0.1.num_batches_tracked"]) == 0
    from my_frozen_nets import frozen_bn_net

    assert not torch.equal(state["1.weight"], frozen_bn_net((1, 8, 8), 3)[1].weight)

    with open(out / "suspects.csv", newline="") as handle:
        suspects = list(csv.DictReader(handle))
    assert sorted(int(r["source_id"]) for r in suspects) == list(range(60))
    for row in suspects:  # source_id is the row of the user's x and y
        assert int(row["given_label"]) == y_noisy[int(row["source_id"])]

    # Keeping only part of a shipped meta set is an explicit choice, and is said.
    code, stdout, _ = run(["data", "--dataset", f"arrays:{tmp_path / 'mine.npz'}", "--subsample-meta",
                           "--meta-per-class", "2", "--json"], capsys)
    summary = json.loads(stdout)
    assert code == 0 and summary["meta_size"] == 6
    assert summary["meta_source"] == f"x_meta in {tmp_path / 'mine.npz'} (6 of 45, subsampled)"


class DictModel(nn.Module):
    """A Hugging Face style model: returns a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.body(x), "hidden": x.mean()}


def test_a_dict_output_model_in_the_users_own_loop():
    from mwnet import MetaReweighter, MetaWeightNet
    from mwnet.data import MetaSampler
    from mwnet.label_issues import rank_label_issues

    rng = np.random.default_rng(2)
    y = np.arange(48) % 3
    noisy = np.where(np.arange(48) < 12, (y + 1) % 3, y)  # the first 12 labels are wrong
    x = torch.tensor(np.stack([pattern(c, rng) for c in y])[:, None] / 255.0, dtype=torch.float32)
    x_meta = torch.tensor(np.stack([pattern(c, rng) for c in np.arange(12) % 3])[:, None] / 255.0,
                          dtype=torch.float32)

    def loss_fn(out, target):
        return nn.functional.cross_entropy(out["logits"], target, reduction="none")

    def meta_loss_fn(out, target):
        return nn.functional.cross_entropy(out["logits"], target)

    torch.manual_seed(0)
    model = DictModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    weight_net = MetaWeightNet(hidden=32)
    reweighter = MetaReweighter(model, optimizer, weight_net, torch.optim.Adam(weight_net.parameters(), lr=1e-2),
                                loss_fn=loss_fn, meta_loss_fn=meta_loss_fn)
    meta = MetaSampler(TensorDataset(x_meta, torch.arange(12) % 3), batch_size=6)
    loader = DataLoader(TensorDataset(x, torch.as_tensor(noisy)), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(8):
        for xb, yb in loader:
            result = reweighter.step(xb, yb, *next(meta))
    assert isinstance(result.logits, dict) and result.logits["logits"].shape == (16, 3)
    assert result.weights.shape == (16,) and np.isfinite(result.meta_loss)

    # Which labels are wrong, ranked through the same loss on the dict output; ids are the rows of x.
    ordered = DataLoader(TensorDataset(x, torch.as_tensor(noisy)), batch_size=16)
    issues = rank_label_issues(model, weight_net, ordered, loss_fn=loss_fn, score="loss")
    assert issues.ranking.shape == (48,)
    wrong = np.arange(48) < 12
    assert wrong[issues.ranking[:12]].mean() >= 0.75  # the wrong labels come first
