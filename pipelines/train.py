"""Ray Train pipeline: ingested clips -> adapted model -> evaluated, tracked, optionally registered.

The driver (:func:`run_training`) builds the data, the MLflow run and the trainer from one
:class:`~aim_core.config.Config`, then logs the final evaluation, the plots and the model. The loop
each worker runs is in :mod:`pipelines.train_worker`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from aim_core.checkpoint import MODEL_FILE
from aim_core.config import Config
from aim_core.storage import Location, is_uri, join
from aim_core.video import eval_protocol

from . import ingest, plots, registry, tracking
from .cluster_config import check_storage, dashboard_host, train_scaling
from .train_worker import EVAL_COLUMNS, EVAL_FILE, STATE_FILE, train_loop_per_worker

log = logging.getLogger(__name__)

MLFLOW_RUN_FILE = "mlflow_run_id"
TRAIN_VIDEOS_FILE = "train_videos.json"   # MLflow artifact under ingest/


class RunExistsError(RuntimeError):
    """A run of this name already has results in the storage path."""


class MlflowEpochLogger(ray.train.UserCallback):
    """Logs each epoch's metrics to the run's MLflow run from the Train controller.

    ``after_report`` fires once the epoch's checkpoint is persisted, so an epoch that a failed
    worker group has to redo is logged once, when it finally completes: one continuous history.
    """

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        if metrics and "epoch" in metrics[0]:
            tracking.mlflow.set_tracking_uri(self.tracking_uri)
            tracking.log_epoch(metrics[0], int(metrics[0]["epoch"]), run_id=self.run_id)


@dataclass
class TrainOutcome:
    """What a finished run leaves behind, for the CLI, the demo and sweeps."""

    run_name: str
    run_path: str
    model_dir: Path                      # local copy of the final checkpoint's model.pt folder
    history: list[dict[str, Any]]
    evaluation: dict[str, Any]
    mlflow_run_id: str | None
    class_names: list[str]
    cost: dict[str, float] = field(default_factory=dict)
    registered_version: str | None = None


def ensure_ray(address: str | None = None) -> None:
    """Join ``RAY_ADDRESS`` (or ``address``; ``auto`` finds a head on this machine) when set, else
    start a private local cluster with its dashboard on loopback.

    Plain ``ray.init()`` would silently join whatever head ``ray start`` left running here; the
    embedded default must not depend on that. Jobs from ``ray job submit`` get ``RAY_ADDRESS``.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(address="local", dashboard_host=dashboard_host(), include_dashboard=True)


def prepare_data(cfg: Config) -> tuple[dict[str, Any], dict[str, ray.data.Dataset], list[str], int,
                                        dict[str, Any]]:
    """Loop config entries, Ray datasets (parquet mode), class names, training videos, reports."""
    if cfg.data.mode == "stream":
        train = ingest.build_dataset(cfg, "train", train=True)
        val = ingest.build_dataset(cfg, "val", train=False, class_map=train.class_map)
        for result in (train, val):
            print(result.report.summary(), flush=True)
        reports = {"train": train.report.to_dict(), "val": val.report.to_dict()}
        if not train.stream.items:
            raise RuntimeError("no readable training videos; see the ingest report above")
        return ({"train_stream": train.stream, "val_stream": val.stream}, {},
                train.class_map.names, len(train.stream.items), reports)
    out = cfg.data.shards_dir or ingest.default_output_dir(cfg)
    train_dir = ingest.materialize(cfg, "train", out)
    val_dir = ingest.materialize(cfg, "val", out)
    reports = {s: ingest.read_report(d).to_dict() for s, d in (("train", train_dir), ("val", val_dir))}
    for r in reports.values():
        print(f"[ingest {r['split']}/parquet] {r['good']}/{r['videos']} videos, {len(r['bad'])} bad",
              flush=True)
    class_map = ingest.load_class_map(out)
    datasets = {"train": ingest.training_columns(ingest.read_shards(train_dir)),
                "val": ingest.read_shards(val_dir).select_columns(EVAL_COLUMNS)}
    return {}, datasets, class_map.names, reports["train"]["clips"], reports


def absolute_paths(cfg: Config) -> Config:
    """Local paths made absolute on the driver: Ray workers run in other folders."""
    def fix(value: str | None) -> str | None:
        if not value or is_uri(value) or os.path.isabs(value):
            return value
        return str(Path(value).expanduser().resolve())

    data = replace(cfg.data, root=fix(cfg.data.root), train_annotations=fix(cfg.data.train_annotations),
                   val_annotations=fix(cfg.data.val_annotations), labels_file=fix(cfg.data.labels_file),
                   shards_dir=fix(cfg.data.shards_dir))
    backbone = cfg.model.backbone
    pretrained = backbone.pretrained
    if pretrained and (os.sep in pretrained or Path(pretrained).expanduser().exists()):
        pretrained = fix(pretrained)
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"model.backbone.pretrained: weights file not found: {pretrained}")
    model = replace(cfg.model, backbone=replace(backbone, pretrained=pretrained))
    return replace(cfg, data=data, model=model, run=replace(cfg.run, storage_path=_storage(cfg)))


def _storage(cfg: Config) -> str:
    path = cfg.run.storage_path
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def _run_exists(storage: str, name: str) -> bool:
    """A run has started under this name (its MLflow marker is written first); an ingest output
    folder alone does not count."""
    return _previous_mlflow_run(storage, name) is not None


def run_training(cfg: Config, *, resume: bool = False, register_as: str | None = None,
                 alias: str = "champion", parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None,
                 callbacks: list[Any] | None = None) -> TrainOutcome:
    """Train ``cfg`` on Ray and track it in MLflow; see the module docstring.

    ``callbacks``: extra Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` when a sweep
    trial runs this (see :mod:`pipelines.sweep`).
    """
    from aim_core.accounting import model_cost

    cfg = absolute_paths(cfg)
    storage = cfg.run.storage_path
    check_storage(storage)
    name = cfg.run.name
    if _run_exists(storage, name) and not resume:
        raise RunExistsError(f"run {name!r} already exists under {storage}: pass --resume to "
                             f"continue it, or choose another run.name")
    ensure_ray()
    cfg = tracking.pin_tracking_uri(cfg)
    loop_data, datasets, class_names, train_videos, reports = prepare_data(cfg)
    if cfg.model.num_classes != len(class_names):
        raise ValueError(f"model.num_classes is {cfg.model.num_classes} but the data has "
                         f"{len(class_names)} classes: {class_names[:10]}")
    cost = model_cost(cfg).to_dict()

    mlflow_run_id = _previous_mlflow_run(storage, name) if resume else None
    with tracking.start_run(cfg, run_name=name, run_id=mlflow_run_id, parent_run_id=parent_run_id,
                            nested=parent_run_id is not None, tags=tags) as run:
        mlflow_run_id = run.info.run_id
        _remember_mlflow_run(storage, name, mlflow_run_id)
        tracking.log_model_cost(cost)
        for split, report in reports.items():
            tracking.mlflow.log_dict(report, f"ingest/{split}_report.json")
        if "train_stream" in loop_data:  # the videos this run trains on (data-fraction studies)
            items = loop_data["train_stream"].items
            tracking.mlflow.log_dict({"video_ids": [i["video_id"] for i in items],
                                      "labels": [int(i["label"]) for i in items]},
                                     f"ingest/{TRAIN_VIDEOS_FILE}")
        scaling = train_scaling(cfg.run, ray.cluster_resources().get("GPU", 0))
        trainer = ray.train.torch.TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.to_dict(), "class_names": class_names,
                               "train_videos": train_videos,
                               **loop_data},
            scaling_config=ray.train.ScalingConfig(**scaling),
            run_config=ray.train.RunConfig(
                name=name, storage_path=storage,
                failure_config=ray.train.FailureConfig(
                    max_failures=cfg.run.max_failures,
                    controller_failure_limit=max(cfg.run.max_failures, 1)),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=[MlflowEpochLogger(cfg.run.tracking_uri, mlflow_run_id),
                           *(callbacks or [])]),
            datasets=datasets or None,
        )
        print(f"[aim-video train] validation: {eval_protocol(cfg)}", flush=True)
        result = trainer.fit()
        outcome = _collect(result, cfg, name, mlflow_run_id, class_names, cost)
        _log_final(outcome, cfg)
        if register_as:
            version = registry.register_model(outcome.model_dir, register_as, alias,
                                              run_id=mlflow_run_id, cfg=cfg)
            outcome.registered_version = version.version
            print(f"[aim-video train] registered models:/{register_as}@{alias} "
                  f"(version {version.version})", flush=True)
    return outcome


def _collect(result: ray.train.Result, cfg: Config, name: str, mlflow_run_id: str,
             class_names: list[str], cost: dict[str, float]) -> TrainOutcome:
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} produced no checkpoint: {result.error}")
    local = Path(tempfile.mkdtemp(prefix=f"aim-video-{name}-"))
    with result.checkpoint.as_directory() as folder:
        for item in Path(folder).iterdir():
            if item.is_file():
                shutil.copy2(item, local / item.name)
    state = torch.load(local / STATE_FILE, map_location="cpu", weights_only=True)
    evaluation = json.loads((local / EVAL_FILE).read_text())
    return TrainOutcome(name, result.path, local, state["history"], evaluation, mlflow_run_id,
                        class_names, cost)


def _log_final(outcome: TrainOutcome, cfg: Config) -> None:
    """Final metrics and test protocol, curves, confusion matrix, evaluation and the model
    checkpoint as artifacts."""
    ev = outcome.evaluation
    ev["protocol"] = str(eval_protocol(cfg))
    tracking.mlflow.log_metrics({"final_top1": ev["top1"], "final_top5": ev["top5"],
                                 "final_mean_class_acc": ev["mean_class_acc"]})
    tracking.mlflow.set_tag("final_protocol", ev["protocol"])
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_figure(plots.plot_curves(outcome.history, Path(tmp) / "curves.png"))
        tracking.log_figure(plots.plot_confusion(ev["confusion"], outcome.class_names,
                                                 Path(tmp) / "confusion.png"))
    tracking.mlflow.log_dict(ev, "evaluation/eval.json")
    tracking.mlflow.log_artifact(str(outcome.model_dir / MODEL_FILE), "checkpoint")
    print(f"[aim-video train] done: val top-1 {100 * ev['top1']:.1f}%, top-5 {100 * ev['top5']:.1f}%, "
          f"mean-class {100 * ev['mean_class_acc']:.1f}% on {ev['num_videos']} videos "
          f"({ev['protocol']}); "
          f"run {outcome.run_path}; MLflow run {outcome.mlflow_run_id}", flush=True)


def _marker(storage: str, name: str) -> str:
    return join(storage, f"{name}/{MLFLOW_RUN_FILE}")


def _remember_mlflow_run(storage: str, name: str, run_id: str) -> None:
    """So that ``--resume`` continues the same MLflow run: one history across restarts."""
    Location.of(_marker(storage, name)).write_text(run_id)


def _previous_mlflow_run(storage: str, name: str) -> str | None:
    return (Location.of(_marker(storage, name)).read_text() or "").strip() or None
