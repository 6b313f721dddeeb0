"""``aim-video compare-classes``: where model B beats model A, class by class (paper Fig. 5)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.evaluation.compare import EvalMismatchError, run_compare

CLASSES = ["pour", "push_left", "push_right", "roll", "spin", "throw", "wave"]
# Per-class accuracies in tenths (10 videos a class), so the confusion matrices are exact.
ACC_A = {"pour": 5, "push_left": 9, "push_right": 8, "roll": 4, "spin": 6, "throw": 2, "wave": 7}
ACC_B = {"pour": 9, "push_left": 4, "push_right": 6, "roll": 7, "spin": 6, "throw": 8, "wave": 6}
# B - A: throw +6, pour +4, roll +3, spin 0, wave -1, push_right -2, push_left -5


def eval_json(path: Path, tenths: dict[str, int], names: list[str] = CLASSES) -> Path:
    """An eval.json as ``aim-video eval`` writes it: misses go to the next class."""
    k = len(names)
    confusion = [[0] * k for _ in range(k)]
    for i, name in enumerate(names):
        confusion[i][i] = tenths[name]
        confusion[i][(i + 1) % k] = 10 - tenths[name]
    per_class = [tenths[n] / 10 for n in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"top1": sum(per_class) / k, "top5": 1.0,
                                "mean_class_acc": sum(per_class) / k, "per_class": per_class,
                                "confusion": confusion, "class_names": names,
                                "num_samples": 10 * k}))
    return path


@pytest.fixture
def evals(tmp_path) -> tuple[Path, Path]:
    return (eval_json(tmp_path / "a" / "eval.json", ACC_A),
            eval_json(tmp_path / "b" / "eval.json", ACC_B))


def test_top_and_bottom_classes_follow_the_accuracy_difference_b_minus_a(evals, tmp_path):
    result = run_compare(*evals, names=("timesformer", "aim"), k=3, out_dir=tmp_path / "out")
    assert [d.name for d in result["top"]] == ["throw", "pour", "roll"]
    assert [d.name for d in result["bottom"]] == ["push_left", "push_right", "wave"]
    assert result["top"][0].diff == pytest.approx(0.6)
    assert result["bottom"][0].diff == pytest.approx(-0.5)


def test_top_and_bottom_never_share_a_class_when_k_is_large(evals, tmp_path):
    result = run_compare(*evals, k=5, out_dir=tmp_path / "out")
    top, bottom = [d.name for d in result["top"]], [d.name for d in result["bottom"]]
    assert len(top) == 5 and bottom == ["push_left", "push_right"]


def test_plots_open_as_pngs_and_the_table_lists_every_class_sorted(evals, tmp_path):
    out = tmp_path / "out"
    run_compare(*evals, names=("timesformer", "aim"), out_dir=out)
    for name in ("class_diff.png", "confusion_timesformer.png", "confusion_aim.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    with (out / "class_diff.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == ["throw", "pour", "roll", "spin", "wave", "push_right",
                                         "push_left"]
    assert float(rows[0]["diff"]) == pytest.approx(0.6)
    assert "| throw | 20.0 | 80.0 | +60.0 |" in (out / "class_diff.md").read_text()


def test_classes_without_videos_are_left_out(tmp_path):
    a = eval_json(tmp_path / "a.json", ACC_A)
    data = json.loads(a.read_text())
    data["per_class"][CLASSES.index("spin")] = None
    a.write_text(json.dumps(data))
    b = eval_json(tmp_path / "b.json", ACC_B)
    result = run_compare(a, b, out_dir=tmp_path / "out")
    assert "spin" not in [d.name for d in result["diffs"]] and len(result["diffs"]) == 6


def test_the_command_prints_the_ranking(evals, tmp_path, capsys):
    assert main(["compare-classes", *map(str, evals), "--names", "ts", "aim", "--k", "2",
                 "--out", str(tmp_path / "out")]) == 0
    top, bottom = capsys.readouterr().out.split("bottom-2")
    assert top.index("top-2 (aim - ts)") < top.index("throw") < top.index("pour")
    assert "roll" not in top
    assert bottom.index("push_left") < bottom.index("push_right")


def test_different_classes_are_a_clear_error(tmp_path):
    a = eval_json(tmp_path / "a.json", ACC_A)
    other = [*CLASSES[:-1], "jump"]
    b = eval_json(tmp_path / "b.json", {**ACC_B, "jump": 3}, names=other)
    with pytest.raises(EvalMismatchError, match=r"only in A: \['wave'\].*only in B: \['jump'\]"):
        run_compare(a, b, out_dir=tmp_path / "out")


def test_reordered_classes_are_a_clear_error_and_the_command_exits_2(tmp_path, capsys):
    a = eval_json(tmp_path / "a.json", ACC_A)
    b = eval_json(tmp_path / "b.json", ACC_B, names=list(reversed(CLASSES)))
    with pytest.raises(EvalMismatchError, match="another order"):
        run_compare(a, b, out_dir=tmp_path / "out")
    assert main(["compare-classes", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    assert "different classes" in capsys.readouterr().err


@pytest.mark.slow
def test_pictures_are_logged_to_the_given_runs(evals, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = mlflow.create_experiment("compare", artifact_location=(tmp_path / "art").as_uri())
        run_id = MlflowClient().create_run(exp).info.run_id
        run_compare(*evals, out_dir=tmp_path / "out", run_b=run_id)
        logged = {Path(a.path).name for a in MlflowClient().list_artifacts(run_id, "compare")}
    finally:
        mlflow.set_tracking_uri(None)
    assert {"class_diff.png", "confusion_A.png", "confusion_B.png", "class_diff.csv"} <= logged
