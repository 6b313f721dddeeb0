"""``aim-video recipe``: the effective training recipe of a config, as the code will run it.

A recipe that differs from the released one in a way nobody wrote down is the usual reason a
reproduction misses the paper's numbers, so this prints what the config resolves to, not what it
says: the frame sampling, the test views, the augmentation, the learning rate over the first epochs
and at the end, and the optimiser's parameter groups with their rates and weight decay (the model is
built on the meta device, so ViT-L/14 costs no memory and no weights are needed).
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from aim_core.backbones import build_model
from aim_core.config import Config, parse_rand_augment
from aim_core.randaugment import M_MAX, Magnitudes
from aim_core.transforms import TRAIN_CROP_RATIO
from aim_core.video import eval_protocol

from pipelines.train.optimization import ParamGroup, accumulation_steps, build_scheduler, param_groups

# Where the lr is shown: epochs from the start, as fractions through the warm-up.
WARMUP_POINTS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)


def model_line(cfg: Config) -> str:
    m = cfg.model
    adapters = (f"adapters {'+'.join(m.adapter.adaptations)} at {m.adapter.placement}, ratio "
                f"{m.adapter.ratio:g}, scale {m.adapter.scale:g}, {m.adapter.temporal_adapters} "
                f"temporal adapter(s); " if m.variant == "aim" else "")
    return f"{adapters}drop path {m.drop_path:g}, head dropout {m.head_dropout:g}"


def sampling_line(cfg: Config) -> str:
    data, t = cfg.data, cfg.model.num_frames
    if data.sampler == "dense":
        train = (f"dense, {t} frames every {data.frame_interval} from a random start "
                 f"(span {t * data.frame_interval})")
    elif data.sampler == "uniform":
        train = (f"{t} segments of (N - 1) / {t} frames (the released rule), one random frame "
                 f"each, segment ends included")
    else:
        train = f"{t} TSN-style segments of N / {t} frames, one random frame each"
    return f"train {train}; short side {data.short_side}"


def augmentation_line(cfg: Config) -> str:
    data = cfg.data
    low, high = data.crop_scale
    parts = [f"random-resized crop (area {low:g}-{high:g}, aspect {TRAIN_CROP_RATIO[0]:.2f}-"
             f"{TRAIN_CROP_RATIO[1]:.2f}) to {cfg.model.image_size}"]
    parts.append("horizontal flip p 0.5" if data.horizontal_flip else "no flip")
    if data.rand_augment:
        parts.append(_rand_augment_text(data.rand_augment))
    if data.pca_lighting:
        parts.append(f"PCA lighting std {data.pca_lighting:g}")
    if data.random_erasing:
        parts.append(f"random erasing p {data.random_erasing:g}")
    if data.label_smoothing:
        parts.append(f"label smoothing {data.label_smoothing:g}")
    return ", ".join(parts)


def _rand_augment_text(spec: str) -> str:
    parsed = parse_rand_augment(spec)
    if parsed.family == "torchvision":
        return (f"torchvision RandAugment {parsed.num_ops} ops at m{parsed.magnitude} of 10 "
                f"({spec})")
    mag = Magnitudes.at(parsed.magnitude)
    extras = ("its own flip p 0.5 and crop up to " if parsed.flip else "crop up to ")
    return (f"imgaug RandAugment {parsed.num_ops} of 18 ops at m{parsed.magnitude} of {M_MAX} "
            f"(rotate +-{mag.rotate_deg:g} deg, shear +-{mag.shear_deg:.2f} deg, translate "
            f"+-{100 * mag.translate:.1f}%, enhance x{1 - mag.enhance:.2f}/{1 + mag.enhance:.2f}, "
            f"{extras}{100 * mag.crop:.1f}% per side)")


def schedule_lines(cfg: Config, steps_per_epoch: int) -> list[str]:
    """The schedule in words, then the first group's lr at points through the warm-up and at the
    cosine's quarter marks, by driving the real scheduler as the training loop does."""
    o = cfg.optim
    head = {"mmcv_cosine": f"mmcv cosine: linear warm-up per step over {o.warmup_epochs:g} epochs "
                           f"from {o.warmup_ratio:g} x lr, cosine per epoch over {o.epochs} epochs "
                           f"to {o.min_lr:g}",
            "cosine_epoch": f"timm cosine per epoch: warm-up from 0 over {o.warmup_epochs:g} "
                            f"epochs, cosine over the remaining epochs to {o.min_lr:g}",
            "cosine_step": f"timm cosine per step: warm-up from 0 over {o.warmup_epochs:g} "
                           f"epochs, cosine over the remaining steps to {o.min_lr:g}"}[o.schedule]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=o.lr)  # the base rate
    scheduler = build_scheduler(optimizer, o, steps_per_epoch)
    points = sorted({*(p for p in WARMUP_POINTS if p < o.epochs),
                     *(round(o.epochs * q) for q in (0.25, 0.5, 0.75)), o.epochs - 1})
    shown = []
    for point in points:
        epoch = int(point)
        scheduler.step(epoch)
        scheduler.step_update(round(point * steps_per_epoch))
        shown.append(f"{point:g}: {optimizer.param_groups[0]['lr']:.2e}")
    return [head, f"base lr at epoch ({steps_per_epoch} steps each; groups scale it by their "
                  f"multiplier) " + ", ".join(shown)]


def group_line(group: ParamGroup) -> str:
    """``lr 3.0e-05  wd 0.05  291 tensors 37.85M: s_adapter 12.6M, ...``: parameters by module,
    block indices folded (``blocks.3.s_adapter.fc1.weight`` counts under ``s_adapter``)."""
    sizes: Counter[str] = Counter()
    for name, param in zip(group.names, group.params):
        sizes[re.sub(r"^blocks\.\d+\.", "", name).split(".")[0]] += param.numel()
    what = ", ".join(f"{kind} {size / 1e6:.2f}M" for kind, size in sizes.items())
    total = sum(sizes.values())
    return (f"lr {group.lr:.1e}  wd {group.weight_decay:g}  {len(group.names)} tensors "
            f"{total / 1e6:.2f}M: {what}")


def describe_recipe(cfg: Config, steps_per_epoch: int = 1000) -> str:
    model = build_model(cfg.model, device="meta")
    o = cfg.optim
    lines = [f"recipe    {cfg.run.name}: {cfg.model.variant} on {cfg.model.backbone.source}:"
             f"{cfg.model.backbone.name}, {cfg.model.num_frames} frames at "
             f"{cfg.model.image_size}px, {cfg.model.num_classes} classes",
             f"model     {model_line(cfg)}",
             f"sampling  {sampling_line(cfg)}",
             f"test      {eval_protocol(cfg)}",
             f"augment   {augmentation_line(cfg)}"]
    lines += [f"{'schedule' if i == 0 else '':10s}{text}"
              for i, text in enumerate(schedule_lines(cfg, steps_per_epoch))]
    lines.append(f"optimiser AdamW (betas 0.9, 0.999), lr {o.lr:g}, weight decay {o.weight_decay:g}"
                 f" (exemptions: {o.no_weight_decay}), lr multipliers {o.lr_mult or 'none'}, "
                 f"batch {o.batch_size} (on one device: {o.per_device_batch} x "
                 f"{accumulation_steps(o, 1)} accumulated)")
    lines += [f"  group {i}: {group_line(g)}" for i, g in enumerate(param_groups(model, o), 1)]
    return "\n".join(lines)
