"""A tiny image-pre-trained ViT for the embedded demo and the tests.

AIM adapts a *pre-trained* image model; a randomly initialised frozen backbone gives chance-level
video results (measured: loss stayed at ln 4). So the embedded default first pre-trains a 3-block,
width-64 ViT for a few seconds on single synthetic images (name the 4x4 grid cell of one object of
random shape and colour on a noisy background) and writes it as an open_clip-format weights file; the demo then
loads it through the same local-file path a user's CLIP weights take.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import build_model, to_clip_layout
from .config import BackboneConfig, ModelConfig
from .transforms import to_model_input

log = logging.getLogger(__name__)

GRID = 4
SHAPES = ("square", "circle", "diamond")
TINY_BACKBONE = BackboneConfig(source="tiny", name="aim-tiny-vit", width=64, layers=3, heads=4,
                               patch_size=8, act="gelu")


def render_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 (n, size, size, 3)`` images of one object each, labelled by its 4x4 grid cell."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = rng.uniform(20, 235, size=(n, 1, 1, 3)).astype(np.float32)
    texture = rng.normal(0, 12, size=(n, size, size, 1)).astype(np.float32)
    colour = rng.uniform(0, 255, size=(n, 1, 1, 3)).astype(np.float32)
    # Keep the object visible: push its colour away from the background.
    too_close = np.abs(colour - background).sum(-1, keepdims=True) < 120
    colour = np.where(too_close, 255 - background, colour)
    radius = rng.uniform(size * 0.08, size * 0.18, size=(n, 1, 1))
    cx = rng.uniform(radius[:, 0, 0], size - radius[:, 0, 0])[:, None, None]
    cy = rng.uniform(radius[:, 0, 0], size - radius[:, 0, 0])[:, None, None]
    shape = rng.integers(len(SHAPES), size=n)
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    masks = np.stack([np.maximum(dx, dy) <= radius, dx ** 2 + dy ** 2 <= radius ** 2,
                      dx + dy <= radius * 1.3])
    mask = masks[shape, np.arange(n)][..., None]
    images = np.clip(np.where(mask, colour, background) + texture, 0, 255).astype(np.uint8)
    cell = (np.minimum(cy[:, 0, 0] * GRID // size, GRID - 1) * GRID
            + np.minimum(cx[:, 0, 0] * GRID // size, GRID - 1)).astype(np.int64)
    return images, cell


def pretrain_tiny_backbone(out_path: str | Path, *, steps: int = 400, batch: int = 128,
                           image_size: int = 32, lr: float = 2e-3, seed: int = 0,
                           backbone: BackboneConfig = TINY_BACKBONE) -> Path:
    """Pre-train the tiny ViT on single images and write ``{"state_dict": {"visual.*": ...}}``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = GRID * GRID
    cfg = ModelConfig(variant="finetuned_space_only", backbone=backbone, num_classes=classes,
                      num_frames=1, image_size=image_size, drop_path=0.0, head_dropout=0.0)
    model = build_model(cfg, load_weights=False).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        images, labels = render_images(batch, image_size, rng)
        clip = to_model_input(torch.from_numpy(images)[:, None])    # (B, 3, 1, H, W)
        loss = F.cross_entropy(model(clip), torch.from_numpy(labels))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps:
            log.info("tiny backbone pre-training: step %d/%d, loss %.3f (%.0f s)", step, steps,
                     loss.item(), time.perf_counter() - start)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.save({"state_dict": {f"visual.{k}": v for k, v in to_clip_layout(state).items()}}, out_path)
    return out_path
