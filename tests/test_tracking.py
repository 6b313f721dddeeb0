"""MLflow tracking: where runs go, runs with the config as params, metrics, cost and figures
(sqlite store in tmp_path, never the repo)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from aim_core.accounting import ModelCost
from aim_core.config import Config
from pipelines.tracking import plots, runs

from .modeltools import tracked_config


@pytest.fixture(autouse=True)
def _mlflow_isolated(isolated_mlflow):
    yield


# ----------------------------------------------------------------------------------------------
# Where tracking goes
# ----------------------------------------------------------------------------------------------

def test_tracking_uri_prefers_config_then_environment_then_the_local_sqlite_store(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = Config()
    assert runs.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert runs.tracking_uri(cfg) == "http://mlflow.internal:5000"
    cfg.run.tracking_uri = "sqlite:///sub/runs.db"  # relative: made absolute for every worker
    assert runs.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/sub/runs.db"
    assert runs.pin_tracking_uri(Config()).run.tracking_uri == "http://mlflow.internal:5000"


def test_artifacts_of_a_sqlite_store_live_next_to_the_database():
    assert runs.artifact_location("sqlite:////data/ml/mlflow.db") == \
        "file:///data/ml/mlartifacts"
    assert runs.artifact_location("http://server:5000") is None


def test_config_is_flattened_to_dotted_params():
    params = runs.flatten_config(Config())
    assert params["model.adapter.ratio"] == "0.25"
    assert params["optim.lr"] == "0.0003"
    assert params["model.adapter.adaptations"] == "['spatial', 'temporal', 'joint']"
    assert params["run.tracking_uri"] == "None"


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_records_config_tags_metrics_cost_and_plots(tmp_path):
    cfg = tracked_config(tmp_path)
    with runs.start_run(cfg, run_name="trial-0") as run:
        runs.log_model_cost(ModelCost(1000, 100, 0.5, 2))
        for epoch in range(3):
            runs.log_epoch({"train_loss": 1.0 / (epoch + 1), "val_top1": 0.3 * epoch,
                                "per_class": [0.1, 0.2], "note": "skipped"}, epoch)
        runs.log_file(plots.plot_curves({"train_loss": [1, 0.5]}, tmp_path))
    client = MlflowClient(tracking_uri=runs.tracking_uri(cfg))
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "trial-0"
    assert stored.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert stored.data.params["model.backbone.source"] == "tiny"
    assert stored.data.tags["variant"] == "aim" and stored.data.tags["backbone"] == "tiny:tiny"
    assert stored.data.tags["dataset_root"] == cfg.data.root
    assert stored.data.metrics["cost/tunable_params"] == 100
    assert stored.data.metrics["cost/gmacs_all_views"] == 1.0
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_top1")] == \
        pytest.approx([0.0, 0.3, 0.6])
    assert "per_class" not in stored.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]


@pytest.mark.slow
def test_a_failing_body_marks_the_run_failed_and_a_resumed_run_keeps_its_params(tmp_path):
    cfg = tracked_config(tmp_path)
    with pytest.raises(RuntimeError):
        with runs.start_run(cfg, run_name="crashes") as run:
            raise RuntimeError("worker died")
    client = MlflowClient(tracking_uri=runs.tracking_uri(cfg))
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    with runs.start_run(cfg, run_id=run.info.run_id) as resumed:  # a restarted worker
        runs.log_epoch({"val_top1": 0.5}, 1)
    assert resumed.info.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["val_top1"] == 0.5


@pytest.mark.slow
def test_nested_runs_point_at_their_parent(tmp_path):
    cfg = tracked_config(tmp_path)
    with runs.start_run(cfg, run_name="sweep") as parent:
        with runs.start_run(cfg, run_name="trial", nested=True) as child:
            pass
    client = MlflowClient(tracking_uri=runs.tracking_uri(cfg))
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.slow
def test_a_trial_in_another_process_nests_under_a_running_parent_by_id(tmp_path):
    cfg = tracked_config(tmp_path)
    client = MlflowClient(tracking_uri=runs.tracking_uri(cfg))
    parent = client.create_run(runs.experiment_id(cfg))  # running, but not active here
    with runs.start_run(cfg, run_name="trial-1", nested=True,
                            parent_run_id=parent.info.run_id) as child:
        pass
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
