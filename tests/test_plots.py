"""Training curves and confusion matrices are real, non-blank PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from pipelines.tracking import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05, "the image is (nearly) blank"



def test_training_curves_are_a_png_with_loss_accuracy_and_lr(tmp_path):
    history = [{"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.6 / e, "val_top1": 0.2 * e,
                "val_top5": 0.3 + 0.1 * e, "lr": 3e-4 * (1 - e / 5)} for e in range(1, 5)]
    path = plots.plot_curves(history, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    assert_png(path)
    as_columns = {k: [row[k] for row in history] for k in history[0]}
    assert_png(plots.plot_curves(as_columns, tmp_path / "plots"))  # a folder: curves.png in it
    with pytest.raises(ValueError, match="no loss/accuracy/lr"):
        plots.plot_curves([{"epoch": 1, "throughput": 3.0}], tmp_path)


def test_confusion_matrix_is_a_png(tmp_path):
    cm = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]  # a class without samples must not break it
    path = plots.plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert_png(path)
    assert_png(plots.plot_confusion(np.eye(80, dtype=int) * 3, None, tmp_path))  # many classes
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion(cm, ["a", "b"], tmp_path)
