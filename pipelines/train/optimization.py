"""The released recipe's optimisation: AdamW over parameter groups (lr multipliers, weight-decay
exemptions), mmcv's warm-up + cosine schedule, mixed precision, gradient accumulation to the
recipe's batch size."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from aim_core.config import OptimConfig
from aim_core.inference import autocast, autocast_dtype, precision_name

# The released configs' paramwise_cfg custom_keys with decay_mult=0 (configs/recognition/vit/*.py).
RELEASED_NO_DECAY = ("class_embedding", "positional_embedding", "ln_1", "ln_2", "ln_pre", "ln_post")
# Our lr groups by the names mmcv matches in the release's model: backbone.*, cls_head.*.
_RELEASED_GROUP_KEYS = {"backbone": "backbone", "head": "cls_head"}


def lr_group(name: str) -> str:
    """``head`` for the classifier, ``backbone`` for everything else (the release's grouping)."""
    return "head" if name.startswith("head.") else "backbone"


def released_setting(name: str, cfg: OptimConfig) -> tuple[float, float]:
    """``(lr multiplier, weight decay)`` of one parameter as mmcv's DefaultOptimizerConstructor
    gives them with the release's custom_keys: the longest key found in the parameter's name in
    the released model (``backbone.`` / ``cls_head.`` + ours) decides, ties alphabetically. So with
    ``lr_mult: {backbone: 0.1}`` (released ViT-L/14) ``backbone`` outranks ``ln_post``: the final
    norm trains at 0.1 x lr *with* weight decay, as in the release."""
    keys: dict[str, tuple[float, float]] = {key: (1.0, 0.0) for key in RELEASED_NO_DECAY}
    keys.update({_RELEASED_GROUP_KEYS[g]: (m, 1.0) for g, m in cfg.lr_mult.items()})
    released_name = f"{'cls_head' if lr_group(name) == 'head' else 'backbone'}.{name}"
    for key in sorted(sorted(keys), key=len, reverse=True):
        if key in released_name:
            lr_mult, decay_mult = keys[key]
            return lr_mult, cfg.weight_decay * decay_mult
    return 1.0, cfg.weight_decay


@dataclass
class ParamGroup:
    """Tunable parameters that share a learning rate and a weight decay."""

    lr: float
    weight_decay: float
    names: list[str]
    params: list[nn.Parameter]


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[ParamGroup]:
    """The tunable parameters grouped by ``(lr, weight decay)``, highest lr first (so
    ``param_groups[0]``, which the training loop logs, carries the base rate when a group has it).

    ``optim.no_weight_decay``: ``released`` follows :func:`released_setting`; ``1d_and_embeddings``
    exempts what ``model.no_weight_decay()`` names (every 1-D tensor and embedding) and takes
    ``optim.lr_mult`` by :func:`lr_group`.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[float, float], ParamGroup] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if cfg.no_weight_decay == "released":
            lr_mult, decay = released_setting(name, cfg)
        else:
            lr_mult = cfg.lr_mult.get(lr_group(name), 1.0)
            decay = 0.0 if name in skip else cfg.weight_decay
        key = (cfg.lr * lr_mult, decay)
        group = groups.setdefault(key, ParamGroup(*key, [], []))
        group.names.append(name)
        group.params.append(param)
    return [groups[key] for key in sorted(groups, reverse=True)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999 as released) over the tunable weights, in :func:`param_groups`."""
    groups = [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay}
              for g in param_groups(model, cfg)]
    return torch.optim.AdamW(groups, lr=cfg.lr)


class MmcvCosineSchedule:
    """The released schedule, exactly: mmcv's ``CosineAnnealingLrUpdaterHook`` with
    ``warmup='linear'``, ``warmup_by_epoch=True`` (mmcv 1.3-1.4, ``runner/hooks/lr_updater.py``).

    Epoch ``e`` (from 0) of ``E`` runs at the regular rate ``min_lr + (lr - min_lr) (1 + cos(pi e /
    E)) / 2`` per group. During the first ``W = warmup_epochs x steps_per_epoch`` optimiser steps,
    step ``i`` (counted from 0 over the run) runs at the regular rate times ``warmup_ratio + (1 -
    warmup_ratio) i / W``. As in mmcv, when ``W`` is fractional the last warm-up rate holds until
    the end of that epoch. Call ``step(epoch)`` at each epoch start, ``step_update(n)`` after the
    ``n``-th optimiser step: the rate is a pure function of both, so a resumed run continues
    exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                 steps_per_epoch: int) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group.setdefault("initial_lr", group["lr"])
                         for group in optimizer.param_groups]
        self.epochs, self.min_lr = cfg.epochs, cfg.min_lr
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.warmup_steps = cfg.warmup_epochs * self.steps_per_epoch
        self.warmup_ratio = cfg.warmup_ratio
        self.epoch = 0

    def lr(self, base_lr: float, epoch: int, step: int) -> float:
        """The rate of a group whose base rate is ``base_lr`` at ``step`` of ``epoch``."""
        regular = self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + math.cos(math.pi * epoch
                                                                              / self.epochs))
        return regular * self._warmup_factor(epoch, step)

    def _warmup_factor(self, epoch: int, step: int) -> float:
        last = math.floor(self.warmup_steps)
        if step < self.warmup_steps:
            i = step
        elif epoch * self.steps_per_epoch <= last:  # warm-up ended in this epoch: mmcv holds
            i = last
        else:
            return 1.0
        if i >= self.warmup_steps:
            return 1.0
        return self.warmup_ratio + (1 - self.warmup_ratio) * i / self.warmup_steps

    def _set(self, step: int) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr(base, self.epoch, step)

    def step(self, epoch: int) -> None:
        self.epoch = epoch
        self._set(epoch * self.steps_per_epoch)

    def step_update(self, num_updates: int) -> None:
        self._set(num_updates)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    steps_per_epoch: int) -> MmcvCosineSchedule | CosineLRScheduler:
    """``optim.schedule``: ``mmcv_cosine`` (:class:`MmcvCosineSchedule`, the release) or timm's
    linear warm-up from 0 then cosine to ``min_lr`` over the remaining epochs, per epoch
    (``cosine_epoch``) or per optimiser step (``cosine_step``). All take ``step(epoch)`` at each
    epoch start and ``step_update(step)`` after each optimiser step; timm's ignores whichever does
    not match its mode."""
    if cfg.schedule == "mmcv_cosine":
        return MmcvCosineSchedule(optimizer, cfg, steps_per_epoch)
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
