"""``aim-video models``: the registry at the command line, against a real sqlite registry; every
registered version says in MLflow itself which model it is."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from aim_core.backbones import build_model
from aim_core.checkpoint import save_model
from pipelines.cli import main
from pipelines.tracking import registry, runs

from .modeltools import CLASSES, tracked_config, trained_like

pytestmark = pytest.mark.slow   # registry round trips


@pytest.fixture
def two_versions(tmp_path, isolated_mlflow, monkeypatch):
    """Two versions of ``tiny``, each logged in a training run with its final scores; the second
    holds @champion. The CLI finds the store through MLFLOW_TRACKING_URI."""
    cfg = tracked_config(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.run.tracking_uri)
    for i, (top1, mean_class) in enumerate([(0.75, 0.70), (0.5, 0.45)]):
        ckpt = save_model(tmp_path / f"ckpt{i}", trained_like(build_model(cfg.model)), cfg,
                          CLASSES)
        with runs.start_run(cfg, run_name=f"train-{i}") as run:
            mlflow.log_metrics({"final_top1": top1, "final_mean_class_acc": mean_class,
                                "final_top5": 1.0})
            mlflow.set_tags({"final_protocol": "2 clips x 1 crop, 4 frames, dense 4x2",
                             "dataset_digest": f"{i}" * 64})
            registry.register_model(ckpt, "tiny", run_id=run.info.run_id)
    return cfg


def test_every_version_carries_a_description_and_tags_in_mlflow(two_versions):
    client = MlflowClient()
    v1 = client.get_model_version("tiny", "1")
    assert "AIM (spatial+temporal+joint) video classifier of 5 classes (left, right" in \
        v1.description and "tiny:tiny backbone" in v1.description
    assert v1.tags["val_top1"] == "0.7500" and v1.tags["val_mean_class_acc"] == "0.7000"
    assert v1.tags["test_views"] == "2 clips x 1 crop, 4 frames, dense 4x2"
    assert v1.tags["dataset_digest"] == "0" * 64 and v1.tags["backbone"] == "tiny:tiny"
    assert int(v1.tags["tunable_params"]) > 0


def test_models_lists_versions_with_aliases_and_scores(two_versions, capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["model", "version", "aliases", "val"]
    v2, v1 = lines[1], lines[2]
    assert v2.split()[:3] == ["tiny", "2", "@champion"] and "50.0%" in v2 and "45.0%" in v2
    assert v1.split()[:3] == ["tiny", "1", "-"] and "75.0%" in v1 and "000000000000" in v1


def test_promote_moves_the_alias_after_showing_both_versions(two_versions, capsys):
    assert main(["models", "tiny", "--promote", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith("tiny")]
    assert rows == [["tiny", "2"], ["tiny", "1"]]          # the holder, then the new one
    assert "models:/tiny@champion -> version 1 from version 2" in out
    assert str(MlflowClient().get_model_version_by_alias("tiny", "champion").version) == "1"


def test_promoting_a_version_that_does_not_exist_is_one_line(two_versions, capsys):
    assert main(["models", "tiny", "--promote", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no version 9 (it has 1, 2)" in err[0]
