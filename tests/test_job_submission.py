"""`aim-video train` submitted as a Ray job to a `ray start` head trains, tracks and registers.

This is the path LAPTOP_TO_CLUSTER.md describes (`ray job submit ... -- aim-video train ...`),
run against a real local head: token authentication on, the dashboard on loopback, the config
shipped in the job's working_dir. Afterwards the MLflow store holds the run with its per-epoch
metrics and `models:/job-model@champion`, which loads and predicts.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
import torch
from clusters import (
    CLASSES,
    LocalHead,
    raylet_pids,
    tiny_assets,
    training_config,
    write_config,
)
from mlflow import MlflowClient
from ray.job_submission import JobStatus

from pipelines.tracking import references

pytestmark = pytest.mark.slow

EPOCHS = 2
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def head():
    """A local head as `ray start --head` makes it; stopped (and checked gone) even on failure."""
    head = LocalHead(num_cpus=2).start()
    try:
        yield head
    finally:
        head.stop()
        assert not raylet_pids(head.temp_dir), "the head's raylet outlived the test"


@pytest.fixture
def job_dir(tmp_path, tmp_path_factory):
    """The job's working_dir: only job.yaml, whose paths are all absolute (outside the folder)."""
    config = training_config(tmp_path / "results", tiny_assets(tmp_path_factory), name="job-run",
                             epochs=EPOCHS, run={"num_workers": 1, "cpus_per_worker": 1.0})
    folder = tmp_path / "job"
    write_config(folder / "job.yaml", config)
    return folder, config


@pytest.fixture
def mlflow_uri_restored():
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def test_a_submitted_training_job_succeeds_and_registers_a_loadable_model(
        head, job_dir, mlflow_uri_restored):
    folder, config = job_dir
    client = head.client()

    job_id = head.submit(entrypoint="aim-video train job.yaml --register job-model",
                         runtime_env={"working_dir": str(folder)})
    status = wait_for_job(client, job_id, JOB_TIMEOUT_S)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{logs[-6000:]}"
    assert "registered models:/job-model@champion" in logs

    # The run: in the configured experiment, named after run.name, one metric value per epoch.
    uri = config["run"]["tracking_uri"]
    store = MlflowClient(uri)
    experiment = store.get_experiment_by_name("aim-video")
    (run,) = store.search_runs([experiment.experiment_id],
                               filter_string="attributes.run_name = 'job-run'")
    assert run.info.status == "FINISHED"
    for metric in ("train_loss", "train_top1", "lr", "val_top1"):
        history = store.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), metric
    assert "final_top1" in run.data.metrics

    # The registered model: champion points at a version logged by that run, and it predicts.
    version = store.get_model_version_by_alias("job-model", "champion")
    assert version.run_id == run.info.run_id
    mlflow.set_tracking_uri(uri)
    model, cfg, class_names = references.resolve_model("models:/job-model@champion")
    assert class_names == list(CLASSES)
    clips = torch.randn(2, 3, cfg.model.num_frames, cfg.model.image_size, cfg.model.image_size)
    with torch.no_grad():
        logits = model(clips)
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()

    # Results went where the config said, not into the job's working_dir.
    assert (Path(config["run"]["storage_path"]) / "job-run").is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["job.yaml"]


def test_the_head_refuses_a_client_without_its_token(head):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(AuthenticationError):
        JobSubmissionClient(head.dashboard_url,
                            headers={"Authorization": "Bearer not-the-token"}).list_jobs()


def wait_for_job(client, job_id: str, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout_s} s:\n"
                        f"{client.get_job_logs(job_id)[-6000:]}")
        time.sleep(2)
