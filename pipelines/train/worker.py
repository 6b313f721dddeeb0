"""The Ray Train worker loop: one process per worker, a plain PyTorch loop at heart.

The Ray calls sit at its edges: :func:`ray.train.get_checkpoint` on entry (a restarted worker group
or ``--resume`` continues from the last epoch), :func:`ray.train.get_dataset_shard` for this
worker's share of each epoch's clips (one Ray Data execution per epoch for all workers, see
:mod:`pipelines.data.clips`), and :func:`ray.train.report` with a checkpoint after every epoch.
:mod:`pipelines.train.driver` is the driver that starts it.

Batches arrive as uint8 clips already augmented and at the model's size, prefetched, in pinned
memory on GPUs; the float cast and normalisation run on the device. Gradient accumulation skips
DDP's all-reduce on all but the last micro-step of each optimiser step. Workers' shares of an epoch
differ by up to a block (no row is dropped to even them); :func:`_in_step` keeps them in step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from aim_core.backbones import build_model
from aim_core.checkpoint import MODEL_FILE, read_model_file, save_model
from aim_core.config import Config
from aim_core.inference import Inference
from aim_core.transforms import to_model_input

from pipelines.evaluation.evaluate import VideoScores, score_rows
from pipelines.train.reporting import system_metrics
from pipelines.train.optimization import (Precision, accumulation_steps, build_optimizer,
                                          build_scheduler)

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
EVAL_FILE = "eval.json"
TRAIN_DTYPES = {"frames": torch.uint8, "label": torch.int64, "video": torch.int64,
                "decode_ms": torch.float32, "augment_ms": torch.float32}


def stand_in_batch(cfg: Config, device: torch.device) -> dict[str, torch.Tensor]:
    """One blank clip of the model's shape, for a worker whose share of the epoch ran out."""
    m = cfg.model
    return {"frames": torch.zeros((1, m.num_frames, m.image_size, m.image_size, 3),
                                  dtype=torch.uint8, device=device),
            "label": torch.zeros(1, dtype=torch.int64, device=device)}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = Config.from_dict(config["cfg"])
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.data.seed * 1000 + rank)
    step = Step.build(cfg, world, config["train_videos"], device)
    train_data, val_data = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    start_epoch, history, last_eval = 1, [], None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start_epoch, history, last_eval = _restore(Path(folder), step)
        log.info("rank %d resumed from the checkpoint of epoch %d", rank, start_epoch - 1)

    monitored = config.get("mlflow_run_id") if rank == 0 else None
    with system_metrics(cfg.run.tracking_uri, monitored, cfg.run.system_metrics_s,
                        resume=checkpoint is not None):
        for epoch in range(start_epoch, cfg.optim.epochs + 1):
            if rank == 0:  # before any worker asks for the epoch's first batch (see data.clips)
                ray.get(config["clock"].set.remote(epoch))
            started = time.perf_counter()
            stats = step.epoch(epoch, train_batches(train_data, cfg, device))
            metrics = _epoch_metrics(stats, step, epoch, time.perf_counter() - started, device)
            if epoch % cfg.optim.eval_every == 0 or epoch == cfg.optim.epochs:
                last_eval = evaluate_shards(step.model, cfg, val_data.iter_batches(
                    batch_size=cfg.optim.eval_batch_size, batch_format="numpy"), device,
                    len(config["class_names"]))
                last_eval["class_names"] = config["class_names"]
                metrics.update({"val_top1": last_eval["top1"], "val_top5": last_eval["top5"],
                                "val_mean_class_acc": last_eval["mean_class_acc"]})
            history.append(metrics)
            with tempfile.TemporaryDirectory() as folder:
                report_ckpt = None
                if rank == 0:
                    _save(Path(folder), step, cfg, config["class_names"], epoch, history,
                          last_eval)
                    report_ckpt = ray.train.Checkpoint.from_directory(folder)
                ray.train.report(metrics, checkpoint=report_ckpt)


def train_batches(shard: Any, cfg: Config, device: torch.device
                  ) -> Iterable[dict[str, torch.Tensor]]:
    """This worker's share of an epoch: uint8 clips on ``device`` (pinned and prefetched)."""
    return shard.iter_torch_batches(batch_size=cfg.optim.per_device_batch, dtypes=TRAIN_DTYPES,
                                    device=device, pin_memory=device.type == "cuda",
                                    prefetch_batches=cfg.data.prefetch_batches)


@dataclass
class EpochStats:
    loss: float = 0.0
    correct: int = 0
    clips: int = 0
    decode_ms: float = 0.0
    augment_ms: float = 0.0
    input_wait_s: float = 0.0


@dataclass
class Step:
    """The model, its DDP wrapper, optimiser, schedule, precision and loss: one training step."""

    model: torch.nn.Module
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    criterion: torch.nn.Module
    accum: int
    steps_per_epoch: int
    grad_clip: float | None
    stand_in: dict[str, torch.Tensor]   # one blank clip: see _in_step

    @classmethod
    def build(cls, cfg: Config, world: int, train_videos: int, device: torch.device) -> Step:
        model = build_model(cfg.model)
        return cls.around(model, ray.train.torch.prepare_model(model), cfg, world, train_videos,
                          device)

    @classmethod
    def around(cls, model: torch.nn.Module, ddp: torch.nn.Module, cfg: Config, world: int,
               train_videos: int, device: torch.device) -> Step:
        """The step for ``model`` already on ``device`` and wrapped (``ddp``) for ``world``."""
        optimizer = build_optimizer(model, cfg.optim)
        accum = accumulation_steps(cfg.optim, world)
        steps = math.ceil(train_videos / world / cfg.optim.per_device_batch / accum)
        return cls(model, ddp, optimizer, build_scheduler(optimizer, cfg.optim, steps),
                   Precision.for_device(device, cfg.optim.precision),
                   torch.nn.CrossEntropyLoss(label_smoothing=cfg.data.label_smoothing), accum,
                   steps, cfg.optim.grad_clip, stand_in_batch(cfg, device))

    def epoch(self, epoch: int, batches: Iterable[dict[str, torch.Tensor]]) -> EpochStats:
        self.scheduler.step(epoch - 1)
        self.ddp.train()
        stats, micro, updates = EpochStats(), 0, (epoch - 1) * self.steps_per_epoch
        distributed = isinstance(self.ddp, DistributedDataParallel)
        self.optimizer.zero_grad(set_to_none=True)
        for batch, weight in _in_step(_timed(batches, stats), self.stand_in, distributed):
            micro += 1
            last_micro = micro % self.accum == 0
            with contextlib.nullcontext() if last_micro or not distributed else \
                    self.ddp.no_sync():
                self._forward_backward(batch, stats, weight)
            if last_micro:
                updates += 1
                self._update(updates)
        if micro % self.accum:   # the epoch ended inside an accumulation, on every worker alike
            if distributed:
                self._average_pending()
            self._update(updates + 1)
        return stats

    def _forward_backward(self, batch: dict[str, torch.Tensor], stats: EpochStats,
                          weight: float) -> None:
        clips, labels = to_model_input(batch["frames"]), batch["label"]
        with self.precision.autocast():
            logits = self.ddp(clips)
            loss = self.criterion(logits.float(), labels)
        self.precision.backward(loss * (weight / self.accum))
        if not weight:
            return   # a stand-in: it only keeps this worker in step
        stats.loss += loss.item() * len(labels)
        stats.correct += (logits.argmax(1) == labels).sum().item()
        stats.clips += len(labels)
        stats.decode_ms += float(batch["decode_ms"].sum())
        stats.augment_ms += float(batch["augment_ms"].sum())

    def _update(self, updates: int) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.precision.step(self.optimizer, params, self.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_update(updates)

    def _average_pending(self) -> None:
        """Average the gradients of an accumulation whose micro-steps all skipped DDP's
        all-reduce, by hand."""
        for p in (p for p in self.model.parameters() if p.requires_grad):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            dist.all_reduce(grad)
            p.grad = grad / dist.get_world_size()


def _in_step(batches: Iterable[dict[str, torch.Tensor]], stand_in: dict[str, torch.Tensor],
             distributed: bool) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """This worker's batches with their loss weights, in step with the other workers.

    The split hands out whole blocks, so shares differ by up to a block. A worker whose share
    has run out goes on with a zero-weight ``stand_in`` until every worker's has: all take the
    same micro-steps, all-reduces and optimiser updates, so weights and optimiser state stay
    identical across workers (DDP's ``join()`` pairs the all-reduces but lets a finished worker's
    AdamW state fall behind). Real batches weigh ``world / workers with a batch``, so DDP's mean
    over all workers is the mean over those that had one. One all-reduce of a count per
    micro-step pays for this.
    """
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not distributed:
            if batch is None:
                return
            yield batch, 1.0
            continue
        (active,) = _all_sums(float(batch is not None))
        if not active:
            return
        yield (stand_in, 0.0) if batch is None else (batch, _world() / active)


def _timed(batches: Iterable[dict[str, torch.Tensor]], stats: EpochStats
           ) -> Iterator[dict[str, torch.Tensor]]:
    """The batches, counting the time the loop waited for each (a starved device shows here)."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        stats.input_wait_s += time.perf_counter() - started
        yield batch


def _epoch_metrics(stats: EpochStats, step: Step, epoch: int, seconds: float,
                   device: torch.device) -> dict[str, Any]:
    clips, loss, correct, decode_ms, augment_ms, wait_s = _all_sums(
        stats.clips, stats.loss, stats.correct, stats.decode_ms, stats.augment_ms,
        stats.input_wait_s)
    per_clip = 1 / max(clips, 1)
    return {"epoch": epoch, "train_loss": loss * per_clip, "train_top1": correct * per_clip,
            "lr": step.optimizer.param_groups[0]["lr"], "train_clips": int(clips),
            "clips_per_s": clips / seconds,
            "epoch_seconds": seconds, "peak_memory_mb": _peak_memory_mb(device),
            "precision": step.precision.name,
            "data_decode_ms_per_clip": decode_ms * per_clip,
            "data_augment_ms_per_clip": augment_ms * per_clip,
            "input_wait_s": wait_s / _world()}


@torch.no_grad()
def evaluate_shards(model, cfg: Config, rows: Iterable[dict[str, Any]],
                    device: torch.device, num_classes: int) -> dict[str, Any]:
    """Multi-view evaluation over this worker's rows, merged across workers: every view counts
    exactly once whatever the sharding, because per-video sums are gathered before averaging."""
    scores = score_rows(model, cfg, rows, Inference.for_config(cfg, device))
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, scores)
        scores = VideoScores()
        for part in gathered:
            scores.merge(part)
    model.train()
    return {**scores.meter(num_classes).compute(), "num_videos": len(scores.sums)}


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _reduce_device() -> torch.device:
    """NCCL reduces on the rank's GPU, gloo on the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_sums(*values: float) -> list[float]:
    """The sums of ``values`` over all workers, in one all-reduce."""
    if _world() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return t.tolist()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _save(folder: Path, step: Step, cfg: Config, class_names: list[str], epoch: int,
          history: list[dict[str, Any]], last_eval: dict[str, Any] | None) -> None:
    save_model(folder, step.model, cfg, class_names, extra={"epoch": epoch})
    scaler = step.precision.scaler
    torch.save({"epoch": epoch, "optimizer": step.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler else None, "history": history},
               folder / STATE_FILE)
    if last_eval is not None:
        (folder / EVAL_FILE).write_text(json.dumps(last_eval))


def _restore(folder: Path, step: Step) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    step.model.load_state_dict(read_model_file(folder / MODEL_FILE)["state_dict"], strict=False)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    step.optimizer.load_state_dict(state["optimizer"])
    # The schedule is a pure function of the epoch/step, rebuilt from the current config, so a
    # resumed run may also be extended (--resume with a larger optim.epochs).
    if step.precision.scaler and state["scaler"]:
        step.precision.scaler.load_state_dict(state["scaler"])
    eval_file = folder / EVAL_FILE
    last_eval = json.loads(eval_file.read_text()) if eval_file.exists() else None
    return state["epoch"] + 1, state["history"], last_eval
