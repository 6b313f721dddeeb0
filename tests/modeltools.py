"""Tiny AIM models for tests: a 3-block, width-64 ViT on 32x32 frames."""

from __future__ import annotations

from pathlib import Path

import torch

from aim_core.config import (AdapterConfig, BackboneConfig, Config, DataConfig, ModelConfig,
                             OptimConfig, RunConfig)

FRAMES = 4
CLASSES = ["left", "right", "up", "down", "grow"]


def tiny_cfg(variant: str = "aim", weights: str | None = None, **adapter) -> ModelConfig:
    return ModelConfig(
        variant=variant,
        backbone=BackboneConfig(source="tiny", name="tiny", pretrained=weights, width=64, layers=3,
                                heads=4, patch_size=8, act="quick_gelu"),
        adapter=AdapterConfig(**adapter),
        num_classes=5, num_frames=FRAMES, image_size=32, drop_path=0.0, head_dropout=0.0,
    )


def clips(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, 32, 32, generator=torch.Generator().manual_seed(seed))


def _perturb(params, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def perturb_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    _perturb([p for name, p in model.named_parameters()
              if "adapter" in name or name == "temporal_embedding"], seed)


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Move every tunable weight away from its init so outputs depend on each one of them."""
    _perturb(model.tunable_parameters(), seed=1)
    return model.eval()


def tracked_config(tmp_path: Path, weights: str | None = None) -> Config:
    """:func:`tiny_cfg`'s model with data, optim and run settings, tracked in ``tmp_path/mlflow.db``."""
    return Config(
        model=tiny_cfg(weights=weights),
        data=DataConfig(root=str(tmp_path / "videos"), test_clips=2, test_crops=1,
                        frame_interval=2, short_side=32, horizontal_flip=False),
        optim=OptimConfig(epochs=2, warmup_epochs=0, per_device_batch=4),
        run=RunConfig(name="t", mlflow_experiment="aim-test",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    ).validate()
