"""The Ray Train pipeline trains, survives a killed worker, tracks in MLflow and registers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from aim_core.checkpoint import load_model
from aim_core.config import Config
from aim_core.tiny import pretrain_tiny_backbone
from pipelines.tracking import references, runs
from pipelines.data.synthetic import generate_synthetic
from pipelines.train.driver import RunExistsError, run_training

from clusters import CLASSES, TinyAssets, training_config

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-assets")
    generate_synthetic(root / "synthetic", videos_per_class=12, size=32, frames=16, classes=CLASSES)
    weights = pretrain_tiny_backbone(root / "tiny_vit.pt", steps=150)
    return root / "synthetic" / "videos", weights


def make_cfg(tmp_path: Path, assets, name: str, **run) -> Config:
    """The shared tiny training config, 6 epochs, two half-CPU workers unless ``run`` says else."""
    videos, weights = assets
    run = {"num_workers": 2, "cpus_per_worker": 0.5, **run}
    return Config.from_dict(training_config(tmp_path, TinyAssets(videos, weights), name=name,
                                            epochs=6, run=run))


def test_two_cpu_workers_beat_chance_and_register_a_model_that_reloads(tmp_path, assets, local_ray):
    # Steps of 4 clips at a higher rate: 54 updates in 6 epochs, enough to fit the training set.
    cfg = make_cfg(tmp_path, assets, name="two-workers", register_as="aim-test").with_overrides(
        {"optim.lr": 1e-2, "optim.batch_size": 4, "optim.per_device_batch": 2})
    ctrl_c = signal.getsignal(signal.SIGINT)
    outcome = run_training(cfg)
    assert signal.getsignal(signal.SIGINT) is ctrl_c   # Ray Train's own handler is gone again

    assert [h["epoch"] for h in outcome.history] == list(range(1, 7))
    # Every video once an epoch, though blocks of 8 share 36 videos out as 20 and 16.
    assert [h["train_clips"] for h in outcome.history] == [36] * 6
    assert outcome.evaluation["num_videos"] == 12
    # It learns: the training set is fitted well past chance. On 12 validation videos of a model
    # this small, accuracy swings by a video or two between equivalent runs (5/12 to 6/12 were
    # seen), so validation only has to beat chance.
    first, last = outcome.history[0], outcome.history[-1]
    assert last["train_loss"] < 0.7 * first["train_loss"]
    assert last["train_top1"] > 1 / len(CLASSES) + 0.3
    assert outcome.evaluation["top1"] > 1 / len(CLASSES)
    run = MlflowClient(runs.tracking_uri(cfg)).get_run(outcome.mlflow_run_id)
    assert run.data.params["model.adapter.ratio"] == "0.25"
    assert run.data.metrics["final_top1"] == pytest.approx(outcome.evaluation["top1"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(outcome.mlflow_run_id, "plots")}
    assert {"plots/curves.png", "plots/confusion.png"} <= artifacts
    history = MlflowClient().get_metric_history(outcome.mlflow_run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 7))

    with outcome.model_file() as model:
        local, _, names = load_model(model)
    registered = references.resolve_model("models:/aim-test@champion")
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(registered[0](clip), local(clip), atol=0, rtol=0)
    assert registered[2] == names == list(CLASSES)


def test_a_killed_worker_resumes_from_the_last_checkpoint(tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets, name="killed", num_workers=1, cpus_per_worker=1.0)
    cfg.optim.epochs = 5
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcome", run_training(cfg)))
    thread.start()
    run_dir = Path(cfg.run.storage_path).resolve() / "killed"
    deadline = time.time() + 300
    while not list(run_dir.glob("checkpoint_*")) and time.time() < deadline:
        time.sleep(0.5)
    assert list(run_dir.glob("checkpoint_*")), "no checkpoint was written"
    killed = _kill_a_train_worker()
    thread.join(timeout=600)

    outcome = result["outcome"]
    assert killed
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3, 4, 5]
    steps = [m.step for m in MlflowClient().get_metric_history(outcome.mlflow_run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5]  # one continuous history, each epoch logged once


def test_resume_continues_a_stopped_run_in_the_same_mlflow_run(tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets, name="resumed", num_workers=1, cpus_per_worker=1.0)
    cfg.optim.epochs = 2
    first = run_training(cfg)
    cfg.optim.epochs = 3
    second = run_training(cfg, resume=True)

    assert [h["epoch"] for h in second.history] == [1, 2, 3]
    assert second.history[:2] == first.history
    assert second.mlflow_run_id == first.mlflow_run_id
    steps = [m.step for m in MlflowClient().get_metric_history(second.mlflow_run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3]


def test_a_finished_run_name_is_not_overwritten_without_resume(tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets, name="again")
    (Path(cfg.run.storage_path) / "again").mkdir(parents=True)
    (Path(cfg.run.storage_path) / "again" / "mlflow_run_id").write_text("0123")
    with pytest.raises(RunExistsError, match="--resume"):
        run_training(cfg)


def _kill_a_train_worker() -> bool:
    from ray.util.state import list_actors

    for actor in list_actors(filters=[("state", "=", "ALIVE")]):
        if "RayTrainWorker" in actor.class_name and actor.pid:
            os.kill(actor.pid, signal.SIGKILL)
            return True
    return False


@pytest.fixture(autouse=True)
def _no_active_mlflow_run():
    yield
    while mlflow.active_run():
        mlflow.end_run()
