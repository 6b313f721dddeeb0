"""Train and test transforms on uint8 clips, built from torchvision.transforms.v2.

A clip is stored as uint8 ``(T, H, W, C)`` RGB and stays uint8 through the transforms (they run in
the CPU decode tasks, and a uint8 clip is a quarter of the float bytes to ship); it reaches the
model as float ``(C, T, H, W)`` normalised with CLIP's mean and std by :func:`to_model_input`, on
the model's device, batched. The clip goes through v2 as one ``tv_tensors.Video``
``(T, C, H, W)``: v2 draws a transform's random parameters once per call (and so does imgaug's
RandAugment, :mod:`aim_core.randaugment`), so every frame gets the same crop, flip, RandAugment
ops and erased box. Per-frame randomness would be flicker that a
temporal model could learn from and that a real camera never produces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from aim_core.config import DataConfig, parse_rand_augment
from aim_core.randaugment import ImgaugRandAugment, apply_lut

Clip = Union[torch.Tensor, np.ndarray]

# CLIP's statistics on the 0-255 scale (the released AIM configs use these).
CLIP_MEAN = (122.769, 116.74, 104.04)
CLIP_STD = (68.493, 66.63, 70.321)

# mmaction2's RandomResizedCrop aspect ratios, which the released AIM configs use for every data
# set (the area range is data.crop_scale).
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)

# timm's RandAugment magnitudes run 0..10; torchvision's map bin k of n to k/(n-1) of each op's
# range, and the ranges match timm's at magnitude 10 (rotate 30 deg, shear 0.3, ...).
_TIMM_MAX_MAGNITUDE = 10

# mmaction2's ColorJitter PCA lighting (AlexNet's): RGB eigenvalues and eigenvectors, 0-255 scale.
PCA_EIGVAL = (55.46, 4.794, 1.148)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def to_tchw(clip: Clip) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` (numpy or torch) -> uint8 torch ``(T, 3, H, W)``, as a view."""
    if isinstance(clip, np.ndarray):
        # Arrow/Ray batches hand out read-only arrays, which torch.from_numpy warns about.
        clip = np.ascontiguousarray(clip) if clip.flags.writeable else np.array(clip)
        tensor = torch.from_numpy(clip)
    else:
        tensor = clip
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (T, H, W, 3), got {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip, got {tensor.dtype}")
    return tensor.permute(0, 3, 1, 2)


def to_model_input(clips: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` views -> float ``(B, 3, T, H, W)``, CLIP-normalised.

    Runs wherever the clips are, batched: on the training or serving device, after the uint8 clips
    (a quarter of the float bytes) have crossed to it.
    """
    frames = clips.permute(0, 1, 4, 2, 3).float()                    # (B, T, 3, H, W), a copy
    frames = F.normalize(frames, CLIP_MEAN, CLIP_STD, inplace=True)
    return frames.transpose(1, 2)                                   # the model's layout, a view


def erasing_fill() -> list[int]:
    """The uint8 colour of an erased box: CLIP's mean, which normalises to about 0 (the released
    recipe erases with 0 after normalisation)."""
    return [round(m) for m in CLIP_MEAN]


def build_rand_augment(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``data.rand_augment`` as a transform of uint8 ``(T, C, H, W)`` clips, one draw per clip."""
    parsed = parse_rand_augment(spec)
    if parsed.family == "imgaug":
        return ImgaugRandAugment(parsed.num_ops, parsed.magnitude, flip=parsed.flip)
    return v2.RandAugment(num_ops=parsed.num_ops, magnitude=parsed.magnitude,
                          num_magnitude_bins=_TIMM_MAX_MAGNITUDE + 1)


class PCALighting:
    """mmaction2's ``ColorJitter()`` (the released ViT-L K400 recipe): one RGB offset per clip,
    ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, std)``, added to every frame. Clips stay
    uint8, so the sum is rounded and clipped (the release adds it in float: at most half a grey
    level apart, except at saturated pixels)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3, dtype=torch.float64) * self.std
        rgb = torch.tensor(PCA_EIGVEC, dtype=torch.float64) @ (alpha * torch.tensor(PCA_EIGVAL))
        levels = torch.arange(256, dtype=torch.float64)
        lut = (levels + rgb.view(3, 1)).round().clamp(0, 255).to(torch.uint8)
        return apply_lut(clip.as_subclass(torch.Tensor), lut.expand(clip.shape[0], 3, 256))

    def __repr__(self) -> str:
        return f"PCALighting(std={self.std})"


class TrainTransform:
    """Random-resized crop, optional flip, RandAugment and PCA lighting, random erasing (the
    released configs' order): uint8 ``(T, H, W, 3)`` -> uint8 ``(T, S, S, 3)``.

    RandAugment runs after the crop, on ``image_size`` frames (cheaper than on full frames). Erased
    boxes are filled with CLIP's mean (:func:`erasing_fill`) rather than noise, so the box looks
    the same in every frame.
    """

    def __init__(self, cfg: DataConfig, image_size: int) -> None:
        ops: list[Callable] = [v2.RandomResizedCrop(image_size, scale=tuple(cfg.crop_scale),
                                                    ratio=TRAIN_CROP_RATIO, antialias=True)]
        if cfg.horizontal_flip:
            ops.append(v2.RandomHorizontalFlip(p=0.5))
        if cfg.rand_augment:
            ops.append(build_rand_augment(cfg.rand_augment))
        if cfg.pca_lighting:
            ops.append(PCALighting(cfg.pca_lighting))
        if cfg.random_erasing:
            ops.append(v2.RandomErasing(p=cfg.random_erasing, value=erasing_fill()))
        self.spatial = v2.Compose(ops)

    def __call__(self, clip: Clip) -> torch.Tensor:
        video = self.spatial(tv_tensors.Video(to_tchw(clip)))
        return video.as_subclass(torch.Tensor).permute(0, 2, 3, 1).contiguous()

    def __repr__(self) -> str:
        return f"TrainTransform(spatial={self.spatial})"


def crop_origins(height: int, width: int, size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of 1 centre crop or 3 crops along the long side (start, centre, end)."""
    centre = (int(round((height - size) / 2)), int(round((width - size) / 2)))
    if crops == 1:
        return [centre]
    if crops != 3:
        raise ValueError(f"data.test_crops: expected 1 or 3, got {crops}")
    if width >= height:
        return [(centre[0], left) for left in (0, centre[1], width - size)]
    return [(top, centre[1]) for top in (0, centre[0], height - size)]


class TestTransform:
    """Short-side resize to ``image_size``, then 1 centre crop or 3 crops: uint8
    ``(crops, T, S, S, 3)``."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, image_size: int, crops: int = 1) -> None:
        crop_origins(image_size, image_size, image_size, crops)  # validates ``crops``
        self.image_size, self.crops = image_size, crops

    def __call__(self, clip: Clip) -> torch.Tensor:
        size = self.image_size
        frames = F.resize(to_tchw(clip), [size], antialias=True)
        height, width = frames.shape[-2:]
        views = [F.crop(frames, top, left, size, size)
                 for top, left in crop_origins(height, width, size, self.crops)]
        return torch.stack(views).permute(0, 1, 3, 4, 2).contiguous()

    def __repr__(self) -> str:
        return f"TestTransform(image_size={self.image_size}, crops={self.crops})"


def build_train_transform(cfg: DataConfig, image_size: int) -> Callable[[Clip], torch.Tensor]:
    """uint8 ``(T, H, W, 3)`` -> uint8 ``(T, image_size, image_size, 3)``, augmented.

    Random-resized crop over ``cfg.crop_scale`` of the area; flip only when ``cfg.horizontal_flip``
    (off for direction-dependent classes such as SSv2's "left to right"; imgaug's RandAugment
    flips on its own unless ``-noflip``), RandAugment as ``cfg.rand_augment`` says, PCA lighting
    at ``cfg.pca_lighting``, random erasing with probability ``cfg.random_erasing``. Picklable,
    so it can travel to data-loading workers.
    """
    return TrainTransform(cfg, image_size)


def build_test_transform(cfg: DataConfig, image_size: int) -> Callable[[Clip], torch.Tensor]:
    """uint8 ``(T, H, W, 3)`` -> uint8 ``(cfg.test_crops, T, image_size, image_size, 3)``."""
    return TestTransform(image_size, cfg.test_crops)
