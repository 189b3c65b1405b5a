"""results.md: a grid's provenance, then one table of mean ± std per metric, the best mean of each setting in bold.

Pure formatting of the dict `mwnet.experiment.aggregate.aggregate` returns (plus its provenance header).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mwnet.experiment.grid import overrides_text


def format_markdown(results: Mapping[str, Any]) -> str:
    """results.md: provenance, then one table for best and one for last test accuracy (and weight AUROC)."""
    settings, methods = results["settings"], results["methods"]
    cells = results["cells"]
    done = [c for c in cells if c["status"] == "done"]
    devices = sorted({f"{c.get('device')} ({count(c.get('torch_threads'), 'torch thread')})" for c in done})
    seconds = sum(c.get("train_seconds") or 0.0 for c in done)
    machine = results.get("machine", {})
    seeds = ", ".join(f"{m} {results['seeds'][m]}" for m in methods)
    lines = [
        f"# {count(len(methods), 'method')} × {count(len(settings), 'setting')}",
        "",
        "Written by `mwnet compare`. Each cell is one run directory `<setting>/<method>/seed<k>/` here.",
        "",
        *[f"- Command: `{c}`" for c in results.get("commands", [])],
        f"- Date: {results.get('date', '?')}; mwnet {results.get('mwnet_version', '?')}, torch "
        f"{results.get('torch_version', '?')}, Python {machine.get('python', '?')}",
        f"- Machine: {machine.get('cpu', '?')}; {machine.get('cores', '?')}; {machine.get('os', '?')}"
        + (f"; GPU {machine['gpu']}" if machine.get("gpu") else ""),
        f"- Cells: {results['cells_done']} of {results['cells_total']} finished"
        + (f", on {', '.join(devices)}; {duration(seconds)} of training in total" if done else ""),
        f"- Seeds per method: {seeds}",
        f"- Overrides applied to every cell: {overrides_text(results['overrides'])}",
        "",
        "Mean ± sample standard deviation over the finished seeds (n); **bold**: the highest mean in the setting.",
        "",
        "## Best test accuracy (%)",
        "",
        *_table(results, "best_test_acc", bold=True),
        "",
        "## Last test accuracy (%)",
        "",
        "Test accuracy after the final epoch.",
        "",
        *_table(results, "last_test_acc", bold=True),
    ]
    learned = results.get("learned_weights", [])
    has_auroc = any(results["results"][s][m]["weight_auroc"]["n"] for s in settings for m in learned)
    if has_auroc:
        lines += ["", "## Weight AUROC", "",
                  "AUROC of the last epoch's sample weights as a detector of clean training samples (0.5 = chance; "
                  "only where the labels were corrupted), for the methods whose weights vary from sample to sample.",
                  "", *_table(results, "weight_auroc", bold=False, methods=learned, digits=3)]
    diverged = [c for c in done if c.get("diverged")]
    if diverged:
        lines += ["", "## Diverged cells", "",
                  "Training stopped on a non-finite loss; the last accuracy is that of the model it stopped with.", "",
                  *[f"- {c['dir']}: epoch {c['diverged']['epoch']}, iteration {c['diverged']['iteration']} "
                    f"({c['diverged']['error']})" for c in diverged]]
    missing = [c for c in cells if c["status"] != "done"]
    if missing:
        lines += ["", "## Missing cells", "",
                  *[f"- {c['dir']} ({'interrupted' if c['status'] == 'partial' else 'not run'})" for c in missing]]
    return "\n".join(lines) + "\n"


def _table(results: Mapping[str, Any], metric: str, *, bold: bool, methods: Sequence[str] | None = None,
           digits: int = 2) -> list[str]:
    settings = results["settings"]
    rows = [f"| method | {' | '.join(settings)} |", "|---|" + "---|" * len(settings)]
    for method in methods if methods is not None else results["methods"]:
        texts = []
        for setting in settings:
            row = results["results"][setting][method]
            text = format_cell(row[metric], row["seeds"], digits)
            if bold and method in results["winners"][setting][metric]:
                text = f"**{text}**"
            texts.append(text)
        rows.append(f"| {method} | {' | '.join(texts)} |")
    return rows


def format_cell(stats: Mapping[str, Any], expected: int, digits: int = 2) -> str:
    """"85.12 ± 0.34 (n=3)"; "85.12 (n=1)"; "85.12 ± 0.34 (n=2 of 3)" while seeds are missing; "missing"."""
    n = stats["n"]
    if n == 0:
        return "missing"
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return f"{text} (n={n})" if n >= expected else f"{text} (n={n} of {expected})"


def count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
