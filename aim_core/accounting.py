"""Parameter and FLOP accounting as the paper reports it.

Counts run on the ``meta`` device, so ViT-L/14 at 32 frames costs neither memory nor time. The
paper's "GFLOPs" are multiply-accumulates (the convention of fvcore), so this module counts and
names GMACs: half of what torch's flop counter reports; only matmuls, convolutions and attention are
counted, as there.

The training step is counted too (forward and backward of one clip, activation-checkpointing
recomputation included): a frozen weight needs no weight gradient, so AIM's backward is about one
forward where full fine-tuning's is two. On a compute-bound device this ratio is the floor of the
step-time ratio that ``benchmarks/train_step.py`` measures.

:func:`model_cost` counts with the model's shortcuts off (every token through every block, T-MSA's
output projection apart; :meth:`aim_core.model.VideoClassifier.set_shortcuts`), as the paper
counts; the shortcuts execute about 10% fewer multiply-accumulates for ViT-B/16 AIM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config, ModelConfig
from .model import count_parameters


@dataclass(frozen=True)
class ModelCost:
    total_params: int
    tunable_params: int
    gmacs_per_view: float
    views: int
    train_gmacs_per_clip: float | None = None   # forward + backward, in training mode

    @property
    def gmacs_all_views(self) -> float:
        return self.gmacs_per_view * self.views

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "gmacs_all_views": self.gmacs_all_views}

    def summary(self) -> str:
        return (f"total params   {self.total_params / 1e6:8.2f} M\n"
                f"tunable params {self.tunable_params / 1e6:8.2f} M "
                f"({100 * self.tunable_params / self.total_params:.1f}%)\n"
                f"GMACs / view   {self.gmacs_per_view:8.1f} (the paper's \"GFLOPs\")\n"
                f"GMACs x {self.views:<2d}     {self.gmacs_all_views:8.1f} (test views)"
                + ("" if self.train_gmacs_per_clip is None else
                   f"\ntrain GMACs    {self.train_gmacs_per_clip:8.1f} per clip (forward + "
                   f"backward)"))


def gmacs_per_view(model: torch.nn.Module, cfg: ModelConfig) -> float:
    """Multiply-accumulates, in billions, of one ``(1, 3, T, H, W)`` view through ``model``."""
    device = next(model.parameters()).device
    clip = torch.empty(1, 3, cfg.num_frames, cfg.image_size, cfg.image_size, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(clip)
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def train_gmacs_per_clip(model: torch.nn.Module, cfg: ModelConfig) -> float:
    """Multiply-accumulates, in billions, of a training step's forward and backward for one clip.

    In training mode, so checkpointed blocks are counted twice; the optimizer step (elementwise)
    is not counted, as no elementwise op is.
    """
    device = next(model.parameters()).device
    clip = torch.empty(1, 3, cfg.num_frames, cfg.image_size, cfg.image_size, device=device)
    was_training = model.training
    model.train()
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        model(clip).sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def model_cost(cfg: Config | ModelConfig, views: int | None = None) -> ModelCost:
    """Counts for a config without loading any weights."""
    from .backbones import build_model

    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    if views is None:
        views = cfg.data.test_clips * cfg.data.test_crops if isinstance(cfg, Config) else 1
    model = build_model(model_cfg, device="meta")
    model.set_shortcuts(False)
    total, tunable = count_parameters(model)
    return ModelCost(total, tunable, gmacs_per_view(model, model_cfg), views,
                     train_gmacs_per_clip(model, model_cfg))
