"""Which labels are wrong, measured side by side with cleanlab on Fashion-MNIST (issue 14).

Per setting and seed, every contender ranks the same training set (the preset's split; the noise settings on a
10,000-image subset):
  cleanlab  `cleanlab.filter.find_label_issues` (its default, prune_by_noise_rate) and the self-confidence ranking
            of `cleanlab.rank.get_label_quality_scores`, fed out-of-sample predicted probabilities from K-fold
            cross-validation (stratified on the given labels) of the same MLP, optimiser and schedule;
  ce        one plain CE run of the preset, ranked by its loss (`mwnet.label_issues`, score "loss");
  mwnet     one MW-Net run of the preset, ranked by `mwnet.label_issues` (score "auto");
  cmwnet    one CMW-Net run, likewise.
Then CE is retrained on the training set less each ranking's top k (k = the true number of corrupted labels), and
a frozen V (`--method frozen-vnet`) learned on one seed or noise rate trains on another.

    .venv/bin/python benchmarks/label_issues.py            # resumable: finished pieces are skipped
    .venv/bin/python benchmarks/label_issues.py --report-only

Runs go to --work (not committed; an interrupted run resumes from its checkpoint), the tables to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mwnet.experiment import load_config, resolve_config, train
from mwnet.experiment.build import build
from mwnet.experiment.checkpoint import load_checkpoint
from mwnet.experiment.metrics import auroc
from mwnet.experiment.rundir import run_status
from mwnet.label_issues import LabelIssueWarning, label_issues_from_run, ranking_scores

NOISE_SETTINGS = ("fmnist-uniform-40", "fmnist-uniform-60", "fmnist-flip2-20", "fmnist-flip2-40")
LONG_TAIL_NOISE = "fmnist-lt-noise-uniform-40"
# V learned on (setting, seed 0) reused frozen on: its other seeds, and another noise rate of the same kind.
REUSE = {"fmnist-uniform-40": ("fmnist-uniform-40", "fmnist-uniform-60"),
         "fmnist-flip2-20": ("fmnist-flip2-20", "fmnist-flip2-40")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join((*NOISE_SETTINGS, LONG_TAIL_NOISE)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="mwnet,cmwnet", help="ranking methods besides cleanlab and ce")
    parser.add_argument("--cmwnet-settings", default=LONG_TAIL_NOISE, help="settings CMW-Net runs on ('all')")
    parser.add_argument("--retrain", default="cleanlab,mwnet", help="rankings whose top k CE is retrained without")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10_000, help="training subset of the noise settings")
    parser.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke tests)")
    parser.add_argument("--no-reuse", action="store_true")
    parser.add_argument("--no-step-times", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("runs/label-issues"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/label-issues"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", LabelIssueWarning)  # the results record it ("warning")
    settings, seeds = args.settings.split(","), [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        for seed in seeds:
            for setting in settings:
                run_cell(args, setting, seed)
            if not args.no_reuse:
                for source, targets in REUSE.items():
                    for target in targets:
                        if source in settings and target in settings and (seed, target) != (0, source):
                            piece(args, f"{target}/seed{seed}/frozen-from-{source}-s0",
                                  lambda s=source, t=target, k=seed: reuse(args, s, t, k))
        if not args.no_step_times and (args.work / "fmnist-uniform-40/seed0/run-mwnet").is_dir():
            piece(args, "step-times", lambda: step_times(args))
    report(args, settings, seeds)


def piece(args: argparse.Namespace, name: str, compute) -> dict:
    """The result of one piece of work: read from WORK/NAME.json when done, else computed and saved there."""
    path = args.work / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def config_for(args: argparse.Namespace, setting: str, seed: int, **overrides):
    values = {"seed": seed, "device": "cpu", **overrides}
    if setting in NOISE_SETTINGS and "dataset" not in overrides:
        values["train_subset"] = args.subset
    if args.epochs:  # the preset's schedule, shrunk: milestones at the same fractions of the run
        preset = resolve_config(setting)
        scaled = sorted({max(1, round(m * args.epochs / preset.epochs)) for m in preset.lr_milestones} - {args.epochs})
        values.update(epochs=args.epochs, lr_milestones=[m for m in scaled if m < args.epochs])
    return resolve_config(setting, values)


def trained(config, out: Path) -> dict:
    """Train `config` into `out` (resuming an interrupted run, skipping a finished one); its summary."""
    status = run_status(out)
    if status != "done":
        train(config, out, resume=status == "partial", overwrite=status == "todo" and out.exists())
    return json.loads((out / "summary.json").read_text())


def run_cell(args: argparse.Namespace, setting: str, seed: int) -> None:
    cell = f"{setting}/seed{seed}"
    methods = [m for m in args.methods.split(",") if m and (m != "cmwnet" or args.cmwnet_settings == "all"
                                                            or setting in args.cmwnet_settings.split(","))]
    for method in ("ce", *methods):
        piece(args, f"{cell}/{method}", lambda m=method: ranked_run(args, setting, seed, m))
    piece(args, f"{cell}/cleanlab", lambda: cleanlab_ranking(args, setting, seed))
    for name in args.retrain.split(","):
        if name and (args.work / f"{cell}/{name}.json").is_file():
            piece(args, f"{cell}/retrain-{name}", lambda n=name: retrain(args, setting, seed, n))


def ranked_run(args: argparse.Namespace, setting: str, seed: int, method: str) -> dict:
    out = args.work / setting / f"seed{seed}" / f"run-{method}"
    summary = trained(config_for(args, setting, seed, method=method), out)
    issues = label_issues_from_run(out, score="loss" if method == "ce" else "auto")
    corrupted = _corrupted(out, issues.ids)
    return {**detection(issues.ranking, corrupted, issues.indices), "score": issues.score_name,
            "warning": issues.warning, "ranking": issues.ids[issues.ranking].tolist(), **_accuracy(summary)}


def detection(ranking: np.ndarray, corrupted: np.ndarray, flagged: np.ndarray) -> dict:
    """The AUROC of the ranking's order (positions, most suspect first); precision (= recall) in the top k, k the
    number of corrupted labels; the estimated set's size, precision and recall."""
    k = int(corrupted.sum())
    hits = int(corrupted[flagged].sum())
    return {"auroc": auroc(ranking_scores(ranking), corrupted), "precision_at_k": float(corrupted[ranking[:k]].mean()),
            "k": k,
            "num_estimated": len(flagged), "precision_estimated": hits / len(flagged) if len(flagged) else None,
            "recall_estimated": hits / k if k else None}


def cleanlab_ranking(args: argparse.Namespace, setting: str, seed: int) -> dict:
    from cleanlab.filter import find_label_issues  # the bench extra: pip install 'mwnet[bench]'
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    split, x, _ = normalised_split(args, setting, seed)
    labels = np.asarray(split.y_train)
    probs = np.zeros((len(labels), split.num_classes))
    seconds = 0.0
    folds = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    for f, (fit, held_out) in enumerate(folds):
        out = args.work / setting / f"seed{seed}" / f"cleanlab-fold{f}"
        data = write_arrays(out.with_suffix(".npz"), x[fit], labels[fit], x[held_out], labels[held_out])
        summary = trained(arrays_config(args, setting, seed, data), out)
        seconds += summary["train_seconds"]
        start = time.perf_counter()
        probs[held_out] = predict(out, data, x[held_out])
        seconds += time.perf_counter() - start
        data.unlink()
    start = time.perf_counter()
    flagged_mask = find_label_issues(labels, probs, n_jobs=1)  # one core: the other is busy
    quality = get_label_quality_scores(labels, probs)
    seconds += time.perf_counter() - start
    ids = np.asarray(split.train_index)
    ranking = np.lexsort((np.arange(len(quality)), quality))  # lowest label quality first
    return {**detection(ranking, np.asarray(split.corrupted), np.flatnonzero(flagged_mask)), "folds": args.folds,
            "train_seconds": seconds, "cv_accuracy": float((probs.argmax(1) == np.asarray(split.y_true)).mean()),
            "ranking": ids[ranking].tolist()}


def retrain(args: argparse.Namespace, setting: str, seed: int, name: str) -> dict:
    """CE on the training set less the top k of ranking `name`; test accuracy (%)."""
    ranked = json.loads((args.work / setting / f"seed{seed}" / f"{name}.json").read_text())
    split, x, x_test = normalised_split(args, setting, seed)
    ids = np.asarray(split.train_index)
    removed = np.searchsorted(ids, np.asarray(ranked["ranking"][:ranked["k"]]))
    keep = np.setdiff1d(np.arange(len(ids)), removed)
    out = args.work / setting / f"seed{seed}" / f"retrain-{name}"
    data = write_arrays(out.with_suffix(".npz"), x[keep], np.asarray(split.y_train)[keep], x_test,
                        np.asarray(split.y_test))
    summary = trained(arrays_config(args, setting, seed, data), out)
    data.unlink()
    left = np.asarray(split.corrupted)[keep]
    return {"removed": len(removed), "kept": len(keep), "corrupted_left": int(left.sum()), **_accuracy(summary)}


def reuse(args: argparse.Namespace, source: str, target: str, seed: int) -> dict:
    """frozen-vnet on (target, seed) with V of the mwnet run on (source, seed 0), beside CE and MW-Net there."""
    v_from = args.work / source / "seed0" / "run-mwnet"
    out = args.work / target / f"seed{seed}" / f"frozen-from-{source}-s0"
    summary = trained(config_for(args, target, seed, method="frozen-vnet", weight_net_from=str(v_from)), out)
    issues = label_issues_from_run(out)
    result = {"source": f"{source}/seed0", **_accuracy(summary),
              **detection(issues.ranking, _corrupted(out, issues.ids), issues.indices)}
    for method in ("ce", "mwnet"):
        ranked = json.loads((args.work / target / f"seed{seed}" / f"{method}.json").read_text())
        result[method] = {key: ranked[key] for key in ("best_test_acc", "last_test_acc", "train_seconds", "auroc")}
    return result


def step_times(args: argparse.Namespace, rounds: int = 7, steps: int = 30) -> dict:
    """Median seconds per training step of ce, frozen-vnet and mwnet on fmnist-uniform-40's batches, measured in
    alternating rounds in one process (so that the load of other processes on the machine hits each alike)."""
    v_from = str(args.work / "fmnist-uniform-40" / "seed0" / "run-mwnet")
    setups = {m: build(config_for(args, "fmnist-uniform-40", 0, method=m, **extra), torch.device("cpu"))
              for m, extra in (("ce", {}), ("frozen-vnet", {"weight_net_from": v_from}), ("mwnet", {}))}
    times: dict[str, list[float]] = {m: [] for m in setups}
    batches = {m: (batch for _ in itertools.count() for batch in setup.loader) for m, setup in setups.items()}
    for round_ in range(rounds + 1):  # round 0 warms up, untimed
        for method, setup in setups.items():
            meta = setup.meta
            for _ in range(steps):
                x, y, _ = next(batches[method])
                xm, ym, *_ = next(meta) if setup.method.wants_meta() else (None, None)
                start = time.perf_counter()
                setup.method.step(x, y, xm, ym)
                if round_:
                    times[method].append(time.perf_counter() - start)
    medians = {m: float(np.median(t)) for m, t in times.items()}
    return {"seconds_per_step": medians, "relative_to_ce": {m: t / medians["ce"] for m, t in medians.items()},
            "steps": rounds * steps, "threads": torch.get_num_threads()}


def normalised_split(args: argparse.Namespace, setting: str, seed: int):
    """The preset's split, and its training and test images as the runner feeds them (scaled, normalised)."""
    setup = build(config_for(args, setting, seed, method="ce"), torch.device("cpu"))
    split = setup.split
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (split.mean, split.std))
    return split, *((torch.as_tensor(a).float() / 255 - mean).div_(std).numpy() for a in (split.x_train,
                                                                                          split.x_test))


def write_arrays(path: Path, x, y, x_test, y_test) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


def arrays_config(args: argparse.Namespace, setting: str, seed: int, data: Path):
    """The preset's model, optimiser and schedule, on an .npz of normalised images: CE, no meta set, no noise."""
    return config_for(args, setting, seed, method="ce", dataset=f"arrays:{data}", noise=None, imbalance=1.0,
                      train_subset=None, num_meta=0)


@torch.no_grad()
def predict(run_dir: Path, data: Path, x: np.ndarray) -> np.ndarray:
    """Softmax probabilities (n, K) of the final model of the run trained on the arrays `data`."""
    config = dataclasses.replace(load_config(run_dir / "config.json"), dataset=f"arrays:{data}")  # the run may
    setup = build(config, torch.device("cpu"))  # have been trained in a work directory since renamed
    setup.model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    setup.model.eval()
    return torch.cat([setup.model(torch.from_numpy(x[i:i + 1000])).softmax(1)
                      for i in range(0, len(x), 1000)]).numpy()


def _corrupted(run_dir: Path, ids: np.ndarray) -> np.ndarray:
    from mwnet.label_issues import read_run_samples

    samples = read_run_samples(run_dir)
    assert np.array_equal(samples.ids, ids) and samples.true_labels is not None
    return samples.true_labels != samples.given_labels


def _accuracy(summary: dict) -> dict:
    return {key: summary[key] for key in ("best_test_acc", "last_test_acc", "train_seconds", "train_size")}


# -- the tables -----------------------------------------------------------------------------------------------------

ROWS = (("cleanlab", "cleanlab, {folds}-fold CV"), ("ce", "CE, ranked by loss"), ("mwnet", "MW-Net (auto)"),
        ("cmwnet", "CMW-Net (auto)"))


def report(args: argparse.Namespace, settings: list[str], seeds: list[int]) -> None:
    cells = {s: {k: {p.stem: json.loads(p.read_text()) for p in sorted((args.work / s / f"seed{k}").glob("*.json"))}
                 for k in seeds} for s in settings}
    for pieces in (p for s in cells.values() for p in s.values()):
        for result in pieces.values():
            result.pop("ranking", None)
    folds = next((p["cleanlab"]["folds"] for s in cells.values() for p in s.values() if "cleanlab" in p), args.folds)
    lines = ["| setting | ranking | seeds | AUROC | P = R at k | estimated: n / precision / recall | train s | "
             "CE retrained without top k: best / last |", "|---|---|---:|---|---|---|---:|---|"]
    for setting in settings:
        for key, label in ROWS:
            runs = [c[key] for c in cells[setting].values() if key in c]
            if not runs:
                continue
            retrained = [c[f"retrain-{key}"] for c in cells[setting].values() if f"retrain-{key}" in c]
            estimate = (f"{_mean(runs, 'num_estimated', 0)} / {_mean(runs, 'precision_estimated')} / "
                        f"{_mean(runs, 'recall_estimated')}")
            again = _acc(retrained) if retrained else f"(nothing removed: {_acc(runs)})" if key == "ce" else ""
            lines.append(f"| {setting} | {label.format(folds=folds)} | {len(runs)} | {_mean(runs, 'auroc')} | "
                         f"{_mean(runs, 'precision_at_k')} | {estimate} | {_mean(runs, 'train_seconds', 0)} | "
                         f"{again} |")
    lines += ["", "| target | V from | seeds | frozen V: best / last | CE: best / last | MW-Net: best / last | "
              "train s: frozen / CE / MW-Net |", "|---|---|---:|---|---|---|---|"]
    for target in settings:
        reused = {}
        for seed_pieces in cells[target].values():
            for name, result in seed_pieces.items():
                if name.startswith("frozen-from-"):
                    reused.setdefault(result["source"].split("/")[0], []).append(result)
        for source, runs in reused.items():
            ce, mw = [r["ce"] for r in runs], [r["mwnet"] for r in runs]
            lines.append(f"| {target} | {source} seed 0 | {len(runs)} | {_acc(runs)} | {_acc(ce)} | {_acc(mw)} | "
                         f"{_mean(runs, 'train_seconds', 0)} / {_mean(ce, 'train_seconds', 0)} / "
                         f"{_mean(mw, 'train_seconds', 0)} |")
    times_path = args.work / "step-times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else None
    if times:
        relative = times["relative_to_ce"]
        lines += ["", "| step (MLP, batch 100, fmnist-uniform-40) | ms | × CE |", "|---|---:|---:|"]
        lines += [f"| {m} | {1000 * t:.2f} | {relative[m]:.2f} |" for m, t in times["seconds_per_step"].items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"folds": folds, "subset": args.subset, "epochs": args.epochs,
                                                       "step_times": times, "cells": cells}, indent=1) + "\n")
    print("\n".join(lines))


def _mean(runs: list[dict], key: str, digits: int = 3) -> str:
    values = [r[key] for r in runs if r.get(key) is not None and not math.isnan(r[key])]
    if not values:
        return "–"
    mean = f"{np.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {np.std(values, ddof=1):.{digits}f}"


def _acc(runs: list[dict]) -> str:
    return f"{_mean(runs, 'best_test_acc', 2)} / {_mean(runs, 'last_test_acc', 2)}"


if __name__ == "__main__":
    main()
