"""Tiny AIM models for tests: a 3-block, width-64 ViT on 32x32 frames."""

from __future__ import annotations

import torch

from aim_core.config import AdapterConfig, BackboneConfig, ModelConfig

FRAMES = 4


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


def perturb_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adapter" in name or name == "temporal_embedding":
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
