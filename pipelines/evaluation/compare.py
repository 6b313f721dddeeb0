"""``aim-video compare-classes``: per-class accuracy difference of two evaluations (paper Fig. 5).

Two ``eval.json`` files from ``aim-video eval`` on the same classes: the difference ``B - A`` of
each class's accuracy says where model B wins and where it loses (the paper: AIM minus TimeSformer
on SSv2, whose bottom classes are the direction-sensitive pairs). A class absent from either
evaluation (accuracy ``null``: no validation video) has no difference and is left out.

Outputs, in ``out_dir``: ``class_diff.png`` (top-k and bottom-k bars), ``confusion_<A>.png`` and
``confusion_<B>.png``, ``class_diff.csv`` and ``class_diff.md`` (every class, sorted).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

WIN_COLOUR = "#2a9d55"
LOSS_COLOUR = "#d1495b"


class EvalMismatchError(ValueError):
    """The two evaluations are not over the same classes, so they cannot be compared per class."""


@dataclass(frozen=True)
class ClassDiff:
    name: str
    acc_a: float
    acc_b: float

    @property
    def diff(self) -> float:
        return self.acc_b - self.acc_a


def load_eval(path: str | Path) -> dict[str, Any]:
    """An ``eval.json``, checked for the keys a per-class comparison needs."""
    data = json.loads(Path(path).read_text())
    missing = [k for k in ("per_class", "class_names", "confusion") if k not in data]
    if missing:
        raise ValueError(f"{path}: not an aim-video eval.json (missing {', '.join(missing)})")
    if len(data["per_class"]) != len(data["class_names"]):
        raise ValueError(f"{path}: {len(data['per_class'])} per-class accuracies for "
                         f"{len(data['class_names'])} class names")
    return data


def check_same_classes(a: dict[str, Any], b: dict[str, Any], names: Sequence[str] = ("A", "B")
                       ) -> None:
    """Raise :class:`EvalMismatchError` naming the first difference between the class lists."""
    ca, cb = list(a["class_names"]), list(b["class_names"])
    if ca == cb:
        return
    only_a, only_b = sorted(set(ca) - set(cb)), sorted(set(cb) - set(ca))
    if only_a or only_b:
        detail = (f"only in {names[0]}: {only_a[:5] or 'none'}; "
                  f"only in {names[1]}: {only_b[:5] or 'none'}")
    else:
        i = next(i for i, (x, y) in enumerate(zip(ca, cb)) if x != y)
        detail = f"same classes in another order (index {i}: {ca[i]!r} vs {cb[i]!r})"
    raise EvalMismatchError(f"the evaluations are over different classes ({len(ca)} vs {len(cb)}); "
                            f"{detail}")


def class_differences(a: dict[str, Any], b: dict[str, Any]) -> list[ClassDiff]:
    """Every class evaluated in both, sorted by ``B - A`` from best to worst (ties by name)."""
    rows = [ClassDiff(name, float(x), float(y))
            for name, x, y in zip(a["class_names"], a["per_class"], b["per_class"])
            if x is not None and y is not None]
    return sorted(rows, key=lambda r: (-r.diff, r.name))


def top_bottom(diffs: Sequence[ClassDiff], k: int) -> tuple[list[ClassDiff], list[ClassDiff]]:
    """The ``k`` largest and ``k`` smallest differences (bottom: worst first); no class twice."""
    top = list(diffs[:k])
    bottom = [d for d in reversed(diffs) if d not in top][:k]
    return top, bottom


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def plot_differences(top: Sequence[ClassDiff], bottom: Sequence[ClassDiff], names: Sequence[str],
                     path: str | Path) -> Path:
    """Horizontal bars of the top-k (green) and bottom-k (red) differences, in percentage points."""
    rows = list(top) + list(reversed(bottom))       # best at the top, worst at the bottom
    fig = Figure(figsize=(7.5, 0.38 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    values = [100 * r.diff for r in rows]
    ax.barh(range(len(rows)), values, color=[WIN_COLOUR if v >= 0 else LOSS_COLOUR for v in values])
    ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:+.1f} ", va="center", ha="left" if v >= 0 else "right", fontsize=7)
    ax.set_xlabel(f"accuracy difference, {names[1]} - {names[0]} (points)")
    ax.set_title(f"top-{len(top)} and bottom-{len(bottom)} classes")
    ax.margins(x=0.2)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_tables(diffs: Sequence[ClassDiff], names: Sequence[str], out: Path) -> tuple[Path, Path]:
    """``class_diff.csv`` (fractions) and ``class_diff.md`` (percentages), best first."""
    a, b = names
    csv_path, md_path = out / "class_diff.csv", out / "class_diff.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["class", f"acc_{a}", f"acc_{b}", "diff"])
        writer.writerows([d.name, f"{d.acc_a:.6f}", f"{d.acc_b:.6f}", f"{d.diff:+.6f}"]
                         for d in diffs)
    lines = [f"| class | {a} (%) | {b} (%) | {b} - {a} (points) |", "|---|---:|---:|---:|"]
    lines += [f"| {d.name} | {100 * d.acc_a:.1f} | {100 * d.acc_b:.1f} | {100 * d.diff:+.1f} |"
              for d in diffs]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def format_ranking(top: Sequence[ClassDiff], bottom: Sequence[ClassDiff], names: Sequence[str]
                   ) -> str:
    width = max((len(d.name) for d in [*top, *bottom]), default=5)
    lines = []
    for title, rows in ((f"top-{len(top)}", top), (f"bottom-{len(bottom)}", bottom)):
        lines.append(f"{title} ({names[1]} - {names[0]}):")
        lines += [f"  {d.name:<{width}}  {100 * d.acc_a:5.1f}% -> {100 * d.acc_b:5.1f}%  "
                  f"{100 * d.diff:+6.1f}" for d in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# aim-video compare-classes
# ----------------------------------------------------------------------------------------------

def run_compare(eval_a: str | Path, eval_b: str | Path, names: Sequence[str] = ("A", "B"),
                k: int = 5, out_dir: str | Path = "compare_results",
                run_a: str | None = None, run_b: str | None = None) -> dict[str, Any]:
    """Compare two evaluations, write the plots and tables, and log them to the given runs.

    Returns ``top`` and ``bottom`` (:class:`ClassDiff` lists), ``diffs`` (all, sorted) and
    ``files`` (every path written).
    """
    from pipelines.tracking.plots import plot_confusion

    if k < 1:
        raise ValueError(f"--k must be a positive integer, got {k}")
    if len(names) != 2 or _slug(names[0]) == _slug(names[1]):
        raise ValueError(f"--names: expected two different names, got {list(names)}")
    a, b = load_eval(eval_a), load_eval(eval_b)
    check_same_classes(a, b, names)
    diffs = class_differences(a, b)
    if not diffs:
        raise ValueError("no class has an accuracy in both evaluations")
    top, bottom = top_bottom(diffs, k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [plot_differences(top, bottom, names, out / "class_diff.png")]
    files += [plot_confusion(e["confusion"], e["class_names"], out / f"confusion_{_slug(n)}.png")
              for e, n in ((a, names[0]), (b, names[1]))]
    files += write_tables(diffs, names, out)
    _log_to_runs(files, [r for r in (run_a, run_b) if r])
    return {"top": top, "bottom": bottom, "diffs": diffs, "files": files}


def _log_to_runs(files: Sequence[Path], runs: Sequence[str]) -> None:
    if not runs:
        return
    from pipelines.tracking.runs import configure, log_file

    configure()
    for run in dict.fromkeys(runs):
        for path in files:
            log_file(path, "compare", run_id=run)
