"""Ray Train pipeline: ingested clips -> adapted model -> evaluated, tracked, optionally registered.

The worker loop reads like a plain PyTorch loop; the Ray calls sit at its edges
(:func:`ray.train.get_checkpoint` on entry, :func:`ray.train.report` with a checkpoint every epoch).
The driver (:func:`run_training`) builds the data, the MLflow run and the trainer from one
:class:`~aim_core.config.Config`, then logs the final evaluation, the plots and the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from aim_core.backbones import build_model
from aim_core.checkpoint import MODEL_FILE, save_model
from aim_core.config import Config
from aim_core.storage import Location
from aim_core.transforms import build_train_transform

from . import ingest, plots, registry, tracking
from .evaluate import VideoScores, score_rows
from .cluster_config import check_storage, dashboard_host, train_scaling
from .optimization import Precision, accumulation_steps, build_optimizer, build_scheduler

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
EVAL_FILE = "eval.json"
MLFLOW_RUN_FILE = "mlflow_run_id"
EVAL_COLUMNS = ["video_id", "label", "frames"]
TRAIN_VIDEOS_FILE = "train_videos.json"   # MLflow artifact under ingest/


class RunExistsError(RuntimeError):
    """A run of this name already has results in the storage path."""


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------

def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = Config.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.data.seed * 1000 + rank)
    # One dataset per epoch: their progress bars would drown the line per epoch printed below.
    ray.data.DataContext.get_current().enable_progress_bars = False

    model = build_model(cfg.model)
    class_names: list[str] = config["class_names"]
    ddp_model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, cfg.optim)
    accum = accumulation_steps(cfg.optim, world)
    steps_per_epoch = math.ceil(config["train_videos"] / world / cfg.optim.per_device_batch / accum)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch)
    precision = Precision.for_device(device, cfg.optim.precision)
    train_tf = build_train_transform(cfg.data, cfg.model.image_size)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.data.label_smoothing)

    start_epoch, history, last_eval = 1, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start_epoch, history, last_eval = _restore(Path(folder), model, optimizer, precision)
        _print(rank, f"resumed from the checkpoint of epoch {start_epoch - 1}")

    for epoch in range(start_epoch, cfg.optim.epochs + 1):
        scheduler.step(epoch - 1)
        started = time.perf_counter()
        batches = _train_batches(config, cfg, epoch, rank, world)
        stats = _train_one_epoch(ddp_model, model, batches, train_tf, criterion, optimizer,
                                 scheduler, precision, cfg, accum, device, epoch, steps_per_epoch)
        seconds = time.perf_counter() - started
        clips = _all_sum(stats["clips"], device)
        metrics = {"epoch": epoch, "train_loss": _all_mean(stats["loss"], device),
                   "train_top1": _all_mean(stats["top1"], device),
                   "lr": optimizer.param_groups[0]["lr"], "clips_per_s": clips / seconds,
                   "epoch_seconds": seconds, "peak_memory_mb": _peak_memory_mb(device)}
        if epoch % cfg.optim.eval_every == 0 or epoch == cfg.optim.epochs:
            last_eval = evaluate_shards(model, cfg, _val_rows(config, rank, world), device,
                                        len(class_names))
            last_eval["class_names"] = class_names
            metrics.update({"val_top1": last_eval["top1"], "val_top5": last_eval["top5"],
                            "val_mean_class_acc": last_eval["mean_class_acc"]})
        history.append(metrics)
        _print(rank, _epoch_line(metrics, cfg.optim.epochs, precision.name))
        with tempfile.TemporaryDirectory() as folder:
            report_ckpt = None
            if rank == 0:
                _save(Path(folder), model, cfg, class_names, optimizer, precision,
                      epoch, history, last_eval)
                report_ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=report_ckpt)


def _print(rank: int, text: str) -> None:
    if rank == 0:
        print(f"[aim-video train] {text}", flush=True)


def _epoch_line(m: dict[str, Any], epochs: int, precision: str) -> str:
    line = (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train top-1 "
            f"{100 * m['train_top1']:.1f}%  lr {m['lr']:.2e}  {m['clips_per_s']:.1f} clips/s  "
            f"peak {m['peak_memory_mb']:.0f} MB  {precision}  ({m['epoch_seconds']:.1f} s)")
    if "val_top1" in m:
        line += (f"  | val top-1 {100 * m['val_top1']:.1f}%  top-5 {100 * m['val_top5']:.1f}%  "
                 f"mean-class {100 * m['val_mean_class_acc']:.1f}%")
    return line


def _train_batches(config: dict[str, Any], cfg: Config, epoch: int, rank: int,
                   world: int) -> Iterable[dict[str, np.ndarray]]:
    """This worker's share of the epoch: fresh temporal samples per epoch in stream mode."""
    batch = cfg.optim.per_device_batch
    stream: ingest.ClipStream | None = config.get("train_stream")
    if stream is not None:
        ds = stream.dataset(epoch, shard=(rank, world), columns=ingest.TRAIN_COLUMNS)
    else:
        ds = ray.train.get_dataset_shard("train")
    return ds.iter_batches(batch_size=batch, batch_format="numpy")


def _val_rows(config: dict[str, Any], rank: int, world: int) -> Iterable[dict[str, np.ndarray]]:
    stream: ingest.ClipStream | None = config.get("val_stream")
    if stream is not None:
        ds = stream.dataset(0, shard=(rank, world), columns=EVAL_COLUMNS)
    else:
        ds = ray.train.get_dataset_shard("val")
    return ds.iter_batches(batch_size=16, batch_format="numpy")


def _train_one_epoch(ddp_model, model, batches, transform, criterion, optimizer, scheduler,
                     precision: Precision, cfg: Config, accum: int, device: torch.device,
                     epoch: int, steps_per_epoch: int) -> dict[str, float]:
    ddp_model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = correct = seen = micro = 0
    step = (epoch - 1) * steps_per_epoch
    # Workers may get a batch more or less than each other; join() keeps DDP's all-reduces paired.
    joined = ddp_model.join() if isinstance(ddp_model, DistributedDataParallel) else contextlib.nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with joined:
        for batch in batches:
            clips = torch.stack([transform(np.asarray(f)) for f in batch["frames"]]).to(device)
            labels = torch.as_tensor(batch["label"], dtype=torch.long, device=device)
            with precision.autocast():
                logits = ddp_model(clips)
                loss = criterion(logits.float(), labels)
            precision.backward(loss / accum)
            micro += 1
            if micro % accum == 0:
                precision.step(optimizer, params, cfg.optim.grad_clip)
                optimizer.zero_grad(set_to_none=True)
                step += 1
                scheduler.step_update(step)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        if micro % accum:
            precision.step(optimizer, params, cfg.optim.grad_clip)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step_update(step + 1)
    return {"loss": loss_sum / max(seen, 1), "top1": correct / max(seen, 1), "clips": seen}


@torch.no_grad()
def evaluate_shards(model, cfg: Config, rows: Iterable[dict[str, np.ndarray]],
                    device: torch.device, num_classes: int) -> dict[str, Any]:
    """Multi-view evaluation over this worker's rows, merged across workers: every view counts
    exactly once whatever the sharding, because per-video sums are gathered before averaging."""
    scores = score_rows(model, cfg, rows, device)
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, scores)
        scores = VideoScores()
        for part in gathered:
            scores.merge(part)
    model.train()
    return {**scores.meter(num_classes).compute(), "num_videos": len(scores.sums)}


def _all_sum(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item()


def _all_mean(value: float, device: torch.device) -> float:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return _all_sum(value, device) / world


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _save(folder: Path, model, cfg: Config, class_names: list[str], optimizer,
          precision: Precision, epoch: int, history: list[dict[str, Any]],
          last_eval: dict[str, Any] | None) -> None:
    save_model(folder, model, cfg, class_names, extra={"epoch": epoch})
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(),
                "scaler": precision.scaler.state_dict() if precision.scaler else None,
                "history": history}, folder / STATE_FILE)
    if last_eval is not None:
        (folder / EVAL_FILE).write_text(json.dumps(last_eval))


def _restore(folder: Path, model, optimizer, precision: Precision
             ) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    from aim_core.checkpoint import read_model_file

    payload = read_model_file(folder / MODEL_FILE)
    model.load_state_dict(payload["state_dict"], strict=False)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    # The schedule is a pure function of the epoch/step, rebuilt from the current config, so a
    # resumed run may also be extended (--resume with a larger optim.epochs).
    if precision.scaler and state["scaler"]:
        precision.scaler.load_state_dict(state["scaler"])
    last_eval = json.loads((folder / EVAL_FILE).read_text()) if (folder / EVAL_FILE).exists() else None
    return state["epoch"] + 1, state["history"], last_eval


# ----------------------------------------------------------------------------------------------
# Driver side
# ----------------------------------------------------------------------------------------------

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
        if not value or "://" in value or os.path.isabs(value):
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
    return path if "://" in path else str(Path(path).expanduser().resolve())


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
        result = trainer.fit()
        outcome = _collect(result, cfg, name, mlflow_run_id, class_names, cost)
        _log_final(outcome)
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


def _log_final(outcome: TrainOutcome) -> None:
    """Final metrics, curves, confusion matrix, evaluation and the model checkpoint as artifacts."""
    ev = outcome.evaluation
    tracking.mlflow.log_metrics({"final_top1": ev["top1"], "final_top5": ev["top5"],
                                 "final_mean_class_acc": ev["mean_class_acc"]})
    with tempfile.TemporaryDirectory() as tmp:
        tracking.log_figure(plots.plot_curves(outcome.history, Path(tmp) / "curves.png"))
        tracking.log_figure(plots.plot_confusion(ev["confusion"], outcome.class_names,
                                                 Path(tmp) / "confusion.png"))
    tracking.mlflow.log_dict(ev, "evaluation/eval.json")
    tracking.mlflow.log_artifact(str(outcome.model_dir / MODEL_FILE), "checkpoint")
    print(f"[aim-video train] done: val top-1 {100 * ev['top1']:.1f}%, top-5 {100 * ev['top5']:.1f}%, "
          f"mean-class {100 * ev['mean_class_acc']:.1f}% on {ev['num_videos']} videos; "
          f"run {outcome.run_path}; MLflow run {outcome.mlflow_run_id}", flush=True)


def _marker(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}/{MLFLOW_RUN_FILE}"


def _remember_mlflow_run(storage: str, name: str, run_id: str) -> None:
    """So that ``--resume`` continues the same MLflow run: one history across restarts."""
    Location.of(_marker(storage, name)).write_text(run_id)


def _previous_mlflow_run(storage: str, name: str) -> str | None:
    return (Location.of(_marker(storage, name)).read_text() or "").strip() or None
