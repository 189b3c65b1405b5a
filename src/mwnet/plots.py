"""Figures of a run, drawn only from its metrics.jsonl and config.json, so `mwnet plot RUN_DIR` can redraw them.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no display needed). Every
figure is rendered in memory and written atomically; `plot_run` writes its figures only once all of them rendered,
so a metrics.jsonl that is not mwnet's is one ValueError and leaves the old figures as they were.
"""

from __future__ import annotations

import contextvars
import io
import itertools
import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mwnet.experiment.files import write_atomic

FIGURES = ("weighting_function.png", "weight_distribution.png", "test_accuracy.png")
# Where `_save` puts rendered figures while `plot_run` collects them (None: write each one at once).
_STAGED: contextvars.ContextVar[dict[Path, bytes] | None] = contextvars.ContextVar("mwnet_staged_figures",
                                                                                   default=None)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run directory (complete lines only)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {number} is not JSON") from None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"{path} line {number} is not an epoch record (a JSON object with an integer epoch)")
        records.append(record)
    return records


def run_title(run_dir: str | Path) -> str:
    """"method on dataset (noise, imbalance)" from config.json, or the directory name."""
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return Path(run_dir).name
    setting = [s for s in (config.get("noise"), _imbalance(config.get("imbalance"))) if s]
    return f"{config.get('method')} on {config.get('dataset')}" + (f" ({', '.join(setting)})" if setting else "")


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the figures of a run into RUN_DIR/figures/ and return their paths: FIGURES, less the weighting
    function for a method whose weight does not vary with the loss (plain CE: V ≡ 1 says nothing)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no epoch yet")
    title = run_title(run_dir)
    folder = run_dir / "figures"
    paths = [folder / name for name in FIGURES]
    rendered: dict[Path, bytes] = {}
    token = _STAGED.set(rendered)  # `_save` collects the figures here: none is written before all rendered
    try:
        if not any(_varies(r.get("weight_curve")) or r.get("weight_curves_by_head") for r in records):
            paths = paths[1:]
        else:
            plot_weighting_function(records, paths[0], title)
        plot_weight_distribution(records, paths[-2], title)
        plot_accuracy({title: records}, paths[-1], title)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} does not hold the metrics mwnet writes ({type(exc).__name__}: "
                         f"{str(exc)[:100]}); no figure was written") from None
    finally:
        _STAGED.reset(token)
    folder.mkdir(exist_ok=True)
    for path, data in rendered.items():
        write_atomic(path, data)
    return paths


def plot_weighting_function(records: Sequence[Mapping], path: str | Path, title: str = "",
                            max_curves: int = 6) -> None:
    """V(ℓ) over the observed loss range at up to `max_curves` epochs, first to last (darker = later); for a
    class-aware V, one panel per head (`plot_head_curves`)."""
    if any(r.get("weight_curves_by_head") for r in records):
        plot_head_curves(records, path, title, max_curves)
        return
    fig, ax = _figure()
    with_curve = [r for r in records if r.get("weight_curve")]
    chosen = _spread(with_curve, max_curves)
    for i, record in enumerate(chosen):
        shade = 0.15 + 0.85 * (i / max(len(chosen) - 1, 1))
        curve = record["weight_curve"]
        ax.plot(curve["loss"], curve["weight"], color=(0.1, 0.3, 0.7, shade), label=f"epoch {record['epoch']}")
    if not chosen:
        ax.text(0.5, 0.5, "this method has no loss → weight function", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("training loss ℓ")
    ax.set_ylabel("weight V(ℓ)")
    ax.set_title(_wrap(f"Learned weighting function — {title}" if title else "Learned weighting function"))
    if chosen:
        ax.legend(fontsize=8)
    _save(fig, path)


def plot_head_curves(records: Sequence[Mapping], path: str | Path, title: str = "", max_curves: int = 6) -> None:
    """A class-aware V(ℓ, y) (CMW-Net): one panel per head (its classes and their training counts in the panel's
    title) with up to `max_curves` epochs (darker = later), and a last panel with every head at the last epoch."""
    chosen = _spread([r for r in records if r.get("weight_curves_by_head")], max_curves)
    heads = list(chosen[-1]["weight_curves_by_head"]["heads"])
    fig = Figure(figsize=(3.6 * (len(heads) + 1), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(heads) + 1, i + 1) for i in range(len(heads) + 1)]
    for index, (ax, head) in enumerate(zip(axes, heads)):
        for i, record in enumerate(chosen):
            curves = record["weight_curves_by_head"]
            shade = 0.15 + 0.85 * (i / max(len(chosen) - 1, 1))
            ax.plot(curves["loss"], curves["heads"][head], color=(0.1, 0.3, 0.7, shade),
                    label=f"epoch {record['epoch']}")
        ax.set_title(_wrap(f"head {index}: {head}", 40), fontsize=9)
        ax.set_xlabel("training loss ℓ")
    axes[0].set_ylabel("weight V(ℓ, y)")
    axes[0].legend(fontsize=7)
    last = chosen[-1]["weight_curves_by_head"]
    for index, head in enumerate(heads):
        axes[-1].plot(last["loss"], last["heads"][head], label=f"head {index}")
    axes[-1].set_title(f"every head, epoch {chosen[-1]['epoch']}", fontsize=9)
    axes[-1].set_xlabel("training loss ℓ")
    axes[-1].legend(fontsize=7)
    fig.suptitle(_wrap(f"Learned class-aware weighting function — {title}" if title else
                       "Learned class-aware weighting function", 100))
    _save(fig, path)


def plot_weight_distribution(records: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """Weights of clean vs corrupted samples (histograms, first and last epoch) where the truth is known,
    otherwise the weight distribution per class (box: 25–75 %, whiskers: 10–90 %, dot: mean) in the last epoch."""
    last = records[-1]
    hist = last.get("weight_hist") or {}
    if "clean" in hist:
        chosen = _spread(records, 2)
        fig = Figure(figsize=(5.5 * len(chosen), 4), layout="constrained")
        FigureCanvasAgg(fig)
        for i, record in enumerate(chosen):
            ax = fig.add_subplot(1, len(chosen), i + 1)
            h = record["weight_hist"]
            edges = h["edges"]
            centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
            width = edges[1] - edges[0]
            ax.bar(centres, h["clean"], width=width, alpha=0.6, label="clean", color="tab:blue")
            ax.bar(centres, h["corrupted"], width=width, alpha=0.6, label="corrupted", color="tab:red")
            ax.set_xlabel("sample weight")
            ax.set_ylabel("training samples")
            ax.set_title(f"epoch {record['epoch']}")
            ax.legend(fontsize=8)
        fig.suptitle(_wrap(f"Weights of clean vs corrupted samples — {title}" if title else "Weights", 90))
        _save(fig, path)
        return
    fig, ax = _figure()
    quantiles = last.get("weight_quantiles_by_class") or []
    means = last.get("weight_by_class") or []
    stats = []
    positions = []
    for k, q in enumerate(quantiles):
        if q is None:
            continue
        stats.append({"whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4], "fliers": [],
                      "label": str(k)})
        positions.append(k)
    if stats:
        ax.bxp(stats, positions=positions, showfliers=False)
        ax.plot(positions, [means[k] for k in positions], "o", color="tab:red", label="mean", markersize=4)
        ax.legend(fontsize=8)
    # Records say whose labels the classes are: the truth where it is known, else the labels as given.
    ax.set_xlabel(f"class (by {last.get('classes_by', 'true')} label)")
    ax.set_ylabel("sample weight")
    ax.set_title(_wrap(f"Weights per class, epoch {last['epoch']} — {title}" if title else "Weights per class"))
    _save(fig, path)


def plot_accuracy(runs: Mapping[str, Sequence[Mapping]], path: str | Path, title: str = "") -> None:
    """Test accuracy per epoch of one or more runs (with the train accuracy on given labels for a single run)."""
    fig, ax = _figure()
    for label, records in runs.items():
        epochs = [r["epoch"] for r in records]
        line = ax.plot(epochs, [r["test_acc"] for r in records], marker=".", label=f"{label}: test")[0]
        if len(runs) == 1:
            ax.plot(epochs, [r["train_acc"] for r in records], linestyle="--", color=line.get_color(),
                    alpha=0.6, label="train (given labels)")
            if any(r.get("train_fit_corrupted") is not None for r in records):
                ax.plot(epochs, [r.get("train_fit_corrupted") for r in records], linestyle=":", color="tab:red",
                        label="corrupted samples fitted to their wrong label")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a 5-epoch run gets ticks 1…5, not 1.5
    ax.set_ylabel("accuracy (%)")
    ax.set_title(_wrap(f"Accuracy — {title}" if title else "Accuracy"))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | Path) -> None:
    """Render `fig` in the format its path's suffix names (PNG without one) and write it atomically, or hand it to
    `plot_run` while it collects its figures."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix[1:].lower() or "png", dpi=110)
    staged = _STAGED.get()
    if staged is not None:
        staged[Path(path)] = buffer.getvalue()
    else:
        write_atomic(path, buffer.getvalue())


def _wrap(title: str, width: int = 60) -> str:
    """A long title on several lines (matplotlib would cut it at the figure's edge)."""
    return textwrap.fill(title, width, break_long_words=False, break_on_hyphens=False)


def _varies(curve: Mapping | None) -> bool:
    """Whether a recorded weight curve V(ℓ) changes with the loss."""
    weights = (curve or {}).get("weight") or []
    return len(weights) > 1 and max(weights) > min(weights)


def _spread(items: Sequence, count: int) -> list:
    """Up to `count` items evenly spread from the first to the last."""
    if len(items) <= count:
        return list(items)
    if count <= 1:
        return list(items[-1:])
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def _imbalance(value: float | None) -> str | None:
    return None if value in (None, 1, 1.0) else f"imbalance {value:g}"
