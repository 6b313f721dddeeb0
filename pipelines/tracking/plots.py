"""Training curves and confusion matrices as PNGs, for MLflow and reports.

matplotlib ``Figure`` objects only, no pyplot state: safe in threads and Ray workers, headless
everywhere (the Agg backend; we never open windows).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines.tracking.runs import scalar_metrics  # noqa: E402



def _out_path(out: str | Path, default_name: str) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _columns(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
             ) -> tuple[list[float], dict[str, list[float]]]:
    """Epoch axis and one series per key, from per-epoch dicts or a dict of lists."""
    if isinstance(history, Mapping):
        n = max((len(v) for v in history.values()), default=0)
        rows = [{k: v[i] for k, v in history.items() if i < len(v)} for i in range(n)]
    else:
        rows = list(history)
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    series: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        for key, value in scalar_metrics(row).items():
            if key != "epoch":
                series.setdefault(key, [math.nan] * len(rows))[i] = value
    return epochs, series


def _panel(key: str) -> str | None:
    name = key.lower().rsplit("/", 1)[-1]
    if "loss" in name:
        return "loss"
    if name == "lr" or name.startswith("lr") or name.endswith("_lr"):
        return "learning rate"
    if any(tag in name for tag in ("top1", "top5", "acc")):
        return "accuracy"
    return None


def plot_curves(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
                out: str | Path) -> Path:
    """Loss, accuracy and learning rate against epoch as one PNG; returns its path.

    ``history``: per-epoch dicts (``{"epoch": 1, "train_loss": ..., "val_top1": ..., "lr": ...}``)
    or a dict of lists. Keys are grouped by name (``*loss*``, ``*top1*/*top5*/*acc*``, ``lr``).
    """
    epochs, series = _columns(history)
    panels: dict[str, list[str]] = {}
    for key in series:
        if (panel := _panel(key)) is not None:
            panels.setdefault(panel, []).append(key)
    order = [p for p in ("loss", "accuracy", "learning rate") if p in panels]
    if not order:
        raise ValueError(f"plot_curves: no loss/accuracy/lr series in {sorted(series)}")
    fig = Figure(figsize=(4.5 * len(order), 3.6), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(order), squeeze=False)[0], order):
        for key in panels[panel]:
            ax.plot(epochs, series[key], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    path = _out_path(out, "curves.png")
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
                   class_names: Sequence[str] | None, out: str | Path) -> Path:
    """Confusion matrix as a PNG: colour = share of the true class (row), text = counts."""
    cm = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion: expected a square matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"plot_confusion: {len(names)} class names for a {k}x{k} matrix")
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape, float), where=support > 0)
    side = min(max(4.0, 0.45 * k + 2.5), 24.0)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                            color="white" if share[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion ({int(cm.sum())} samples)")
    path = _out_path(out, "confusion.png")
    fig.savefig(path, dpi=110)
    return path
