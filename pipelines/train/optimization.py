"""The published recipe's optimisation: AdamW with weight-decay exclusions, warm-up then cosine,
mixed precision, gradient accumulation to the recipe's batch size."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from aim_core.config import OptimConfig
from aim_core.inference import autocast, autocast_dtype, precision_name


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the tunable weights only; norms, biases and embeddings get no weight decay."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warm-up from 0, then cosine to ``min_lr``: per epoch (the published recipe) or per
    optimiser step. Call ``step(epoch)`` at each epoch start and ``step_update(step)`` after each
    optimiser step; the scheduler ignores whichever does not match its mode."""
    per_step = cfg.schedule == "cosine_step"
    scale = max(steps_per_epoch, 1) if per_step else 1
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, math.ceil((cfg.epochs - cfg.warmup_epochs) * scale)),
        lr_min=cfg.min_lr,
        warmup_t=math.ceil(cfg.warmup_epochs * scale),
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=not per_step,
    )


def accumulation_steps(cfg: OptimConfig, world_size: int) -> int:
    """Micro-batches per optimiser step so that ``per_device_batch x world x steps`` reaches
    ``batch_size`` (64 in the recipe) on however few devices there are."""
    return max(1, round(cfg.batch_size / (cfg.per_device_batch * world_size)))


@dataclass
class Precision:
    """Autocast dtype (``optim.precision``, the rule inference follows too:
    :func:`aim_core.inference.autocast_dtype`) and, for fp16, the loss scaler."""

    dtype: torch.dtype | None
    device_type: str
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_device(cls, device: torch.device, setting: str) -> "Precision":
        dtype = autocast_dtype(setting, device)
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(dtype, device.type, scaler)

    @property
    def name(self) -> str:
        return precision_name(self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(torch.device(self.device_type), self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
             grad_clip: float | None) -> None:
        if self.scaler:
            self.scaler.unscale_(optimizer)
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
