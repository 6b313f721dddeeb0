"""Ray Train pipeline: ingested clips -> adapted model -> evaluated, tracked, optionally registered.

The driver (:func:`run_training`) builds the data, the MLflow run and the trainer from one
:class:`~aim_core.config.Config`, then logs the final evaluation, the plots and the model. The loop
each worker runs is in :mod:`pipelines.train.worker`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import ray
import ray.train
import ray.train.torch
import torch

from aim_core.checkpoint import MODEL_FILE
from aim_core.config import Config
from aim_core.storage import is_uri
from aim_core.video import eval_protocol

from pipelines import console
from pipelines.preflight import check_data_location, check_training
from pipelines.resources import train_scaling
from pipelines.runtime import RunFolder, absolute_paths, ensure_ray
from pipelines.data.training import EveryRowOnce, TrainingData, training_data
from pipelines.tracking import datasets, plots, registry, runs
from pipelines.train.reporting import EpochLines, EpochReporter
from pipelines.train.worker import EVAL_FILE, STATE_FILE, train_loop_per_worker

log = logging.getLogger(__name__)

TRAIN_VIDEOS_FILE = "train_videos.json"   # MLflow artifact under ingest/


class RunExistsError(RuntimeError):
    """A run of this name already has results in the storage path."""


@dataclass
class TrainOutcome:
    """What a finished run leaves behind, for the CLI, the demo and sweeps."""

    run_name: str
    run_path: str
    checkpoint: ray.train.Checkpoint     # the last one: its model.pt is the final model
    history: list[dict[str, Any]]
    evaluation: dict[str, Any]
    mlflow_run_id: str | None
    class_names: list[str]
    cost: dict[str, float] = field(default_factory=dict)
    registered_version: str | None = None

    @contextlib.contextmanager
    def model_file(self) -> Iterator[Path]:
        """The final ``model.pt`` as a local file while the block runs: the checkpoint may live on
        an object store, and a copy kept for later would outlive sweep trials' processes."""
        with self.checkpoint.as_directory() as folder:
            yield Path(folder) / MODEL_FILE


def run_training(cfg: Config, *, resume: bool = False, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None,
                 callbacks: list[Any] | None = None) -> TrainOutcome:
    """Train ``cfg`` on Ray and track it in MLflow; see the module docstring.

    Everything the config and the annotations can tell is checked before Ray starts
    (:func:`pipelines.preflight.check_training`). ``callbacks``: extra Ray Train callbacks, e.g.
    Tune's ``TuneReportCallback`` when a sweep trial runs this (:mod:`pipelines.sweeps.sweep`).
    """
    from aim_core.accounting import model_cost

    check_data_location(cfg)
    cfg = absolute_paths(cfg)
    check_training(cfg)
    folder = RunFolder.of(cfg)
    if folder.exists() and not resume:
        raise RunExistsError(f"run {cfg.run.name!r} already exists under {cfg.run.storage_path}: "
                             f"pass --resume to continue it, or choose another run.name")
    if not is_uri(folder.path):
        console.log_to(folder.path)
    ensure_ray()
    cfg = runs.pin_tracking_uri(cfg)
    data = training_data(cfg)
    cost = model_cost(cfg).to_dict()
    mlflow_run_id = folder.mlflow_run_id() if resume else None
    with runs.start_run(cfg, run_name=cfg.run.name, run_id=mlflow_run_id,
                        parent_run_id=parent_run_id, nested=parent_run_id is not None,
                        tags=tags) as run:
        mlflow_run_id = run.info.run_id
        folder.remember_mlflow_run(mlflow_run_id)
        _log_start(cost, data)
        console.say(f"[aim-video train] validation: {eval_protocol(cfg)}")
        with EpochLines(cfg.run.name, cfg.optim.epochs, cfg.run.print_every) as lines:
            reporter = EpochReporter(cfg.run.tracking_uri, mlflow_run_id, lines.queue)
            result = _fit(_trainer(cfg, data, mlflow_run_id, [reporter, *(callbacks or [])]))
        outcome = _collect(result, cfg, mlflow_run_id, data.class_names, cost)
        _log_final(outcome, cfg)
        if cfg.run.register_as:
            _register(outcome, cfg)
    return outcome


def _log_start(cost: dict[str, float], data: TrainingData) -> None:
    runs.log_model_cost(cost)
    datasets.log_data_identity(data.identity)
    for split, report in data.reports.items():
        mlflow.log_dict(report, f"ingest/{split}_report.json")
    if data.train_videos:  # the videos this run trains on (data-fraction studies)
        mlflow.log_dict({"video_ids": [v["video_id"] for v in data.train_videos],
                         "labels": [int(v["label"]) for v in data.train_videos]},
                        f"ingest/{TRAIN_VIDEOS_FILE}")


def _trainer(cfg: Config, data: TrainingData, mlflow_run_id: str, callbacks: list[Any]
             ) -> ray.train.torch.TorchTrainer:
    scaling = train_scaling(cfg.run, ray.cluster_resources().get("GPU", 0))
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "class_names": data.class_names,
                           "train_videos": data.train_clips, "clock": data.clock,
                           "mlflow_run_id": mlflow_run_id},
        scaling_config=ray.train.ScalingConfig(**scaling),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=cfg.run.storage_path,
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.run.max_failures,
                controller_failure_limit=max(cfg.run.max_failures, 1)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks),
        datasets=data.datasets,   # split across the workers: one execution per epoch for all
        dataset_config=EveryRowOnce(),
    )


def _fit(trainer: ray.train.torch.TorchTrainer) -> ray.train.Result:
    """``trainer.fit()``, and the process's Ctrl-C handling back as it was afterwards: Ray Train
    installs its own (abort the run) and leaves it, so a Ctrl-C during the registration that
    follows, or anything later in this process, would go to a finished run and be lost."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()   # a sweep trial's thread: Ray Train sets no handler there
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)


def _register(outcome: TrainOutcome, cfg: Config) -> None:
    name, alias = cfg.run.register_as, cfg.run.register_alias
    with outcome.model_file() as model:
        version = registry.register_model(model, name, alias, run_id=outcome.mlflow_run_id,
                                          cfg=cfg)
    outcome.registered_version = version.version
    console.say(f"[aim-video train] registered models:/{name}@{alias} (version {version.version})")


def _collect(result: ray.train.Result, cfg: Config, mlflow_run_id: str,
             class_names: list[str], cost: dict[str, float]) -> TrainOutcome:
    name = cfg.run.name
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        evaluation = json.loads((Path(folder) / EVAL_FILE).read_text())
    return TrainOutcome(name, result.path, result.checkpoint, state["history"], evaluation, mlflow_run_id,
                        class_names, cost)


def _log_final(outcome: TrainOutcome, cfg: Config) -> None:
    """Final metrics and test protocol, curves, confusion matrix, evaluation and the model
    checkpoint as artifacts."""
    ev = outcome.evaluation
    ev["protocol"] = str(eval_protocol(cfg))
    mlflow.log_metrics({"final_top1": ev["top1"], "final_top5": ev["top5"],
                        "final_mean_class_acc": ev["mean_class_acc"]})
    mlflow.set_tag("final_protocol", ev["protocol"])
    with tempfile.TemporaryDirectory() as tmp:
        runs.log_file(plots.plot_curves(outcome.history, Path(tmp) / "curves.png"))
        runs.log_file(plots.plot_confusion(ev["confusion"], outcome.class_names,
                                           Path(tmp) / "confusion.png"))
    mlflow.log_dict(ev, "evaluation/eval.json")
    with outcome.model_file() as model:
        mlflow.log_artifact(str(model), "checkpoint")
    console.say(f"[aim-video train] done: val top-1 {100 * ev['top1']:.1f}%, top-5 "
                f"{100 * ev['top5']:.1f}%, mean-class {100 * ev['mean_class_acc']:.1f}% on "
                f"{ev['num_videos']} videos ({ev['protocol']}); run {outcome.run_path}; MLflow run "
                f"{outcome.mlflow_run_id}")
