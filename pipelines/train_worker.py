"""The Ray Train worker loop: one process per worker, a plain PyTorch loop at heart.

The Ray calls sit at its edges: :func:`ray.train.get_checkpoint` on entry (a restarted worker group
or ``--resume`` continues from the last epoch), :func:`ray.train.report` with a checkpoint after
every epoch. :mod:`pipelines.train` is the driver that starts it.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import tempfile
import time
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
from aim_core.model import compile_model
from aim_core.transforms import build_train_transform

from . import ingest
from .evaluate import VideoScores, score_rows
from .optimization import Precision, accumulation_steps, build_optimizer, build_scheduler

STATE_FILE = "train_state.pt"
EVAL_FILE = "eval.json"
EVAL_COLUMNS = ["video_id", "label", "frames"]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = Config.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.data.seed * 1000 + rank)
    # One dataset per epoch: their progress bars would drown the line per epoch printed below.
    ray.data.DataContext.get_current().enable_progress_bars = False

    model = build_model(cfg.model)
    if cfg.model.compile:
        compile_model(model)
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
