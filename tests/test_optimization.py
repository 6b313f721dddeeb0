"""Specification of pipelines.train.optimization: the released schedule, parameter groups, decay rules."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from modeltools import tiny_cfg

from aim_core.backbones import build_model
from aim_core.config import Config, ConfigError, OptimConfig
from pipelines.train.optimization import build_optimizer, build_scheduler, param_groups

CONFIGS = Path(__file__).parent.parent / "configs"
RELEASED = OptimConfig(epochs=30, lr=3e-4, warmup_epochs=2.5, warmup_ratio=0.1,
                       schedule="mmcv_cosine")


def mmcv_reference_lrs(base_lr: float, epochs: int, epoch_len: int, warmup_epochs: float,
                       ratio: float) -> list[float]:
    """The rate of every iteration, transcribed from mmcv 1.4's ``LrUpdaterHook`` (by_epoch,
    ``warmup='linear'``, ``warmup_by_epoch=True``), ``CosineAnnealingLrUpdaterHook(min_lr=0)``."""
    warmup_iters = warmup_epochs * epoch_len
    lrs, lr, cur_iter = [], None, 0
    for epoch in range(epochs):
        # before_train_epoch: annealing_cos(base_lr, min_lr=0, epoch / epochs)
        regular = 0 + 0.5 * (base_lr - 0) * (math.cos(math.pi * epoch / epochs) + 1)
        lr = regular
        for _ in range(epoch_len):                                     # before_train_iter
            if cur_iter < warmup_iters:
                k = (1 - cur_iter / warmup_iters) * (1 - ratio)
                lr = regular * (1 - k)
            elif cur_iter == warmup_iters:
                lr = regular
            lrs.append(lr)
            cur_iter += 1
    return lrs


def lrs_seen_by_each_step(cfg: OptimConfig, steps_per_epoch: int) -> list[list[float]]:
    """Drive the scheduler as ``train_worker`` does and record every group's rate per step."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    seen, step = [], 0
    for epoch in range(cfg.epochs):
        scheduler.step(epoch)
        for _ in range(steps_per_epoch):
            seen.append([g["lr"] for g in optimizer.param_groups])
            step += 1
            scheduler.step_update(step)
    return seen


@pytest.mark.parametrize("steps_per_epoch", [100, 7])  # 7: warm-up ends mid-step (17.5 steps)
def test_mmcv_cosine_matches_mmcv_at_every_step(steps_per_epoch: int) -> None:
    seen = [lrs[0] for lrs in lrs_seen_by_each_step(RELEASED, steps_per_epoch)]
    expected = mmcv_reference_lrs(3e-4, 30, steps_per_epoch, 2.5, 0.1)
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)


def test_released_schedule_at_its_landmarks() -> None:
    lrs = [lrs[0] for lrs in lrs_seen_by_each_step(RELEASED, 100)]
    cosine = [3e-4 * (1 + math.cos(math.pi * e / 30)) / 2 for e in range(30)]
    assert lrs[0] == pytest.approx(3e-5)                      # iteration 0: 0.1 x lr, not 0
    assert lrs[125] == pytest.approx(cosine[1] * (0.1 + 0.9 * 0.5))   # half-way through warm-up
    assert lrs[250] == pytest.approx(cosine[2])               # 2.5 epochs: the regular rate
    assert lrs[299] == lrs[250] and lrs[300] == pytest.approx(cosine[3])  # then per epoch
    assert lrs[-1] == pytest.approx(cosine[29]) and 0 < lrs[-1] < 1e-6   # last epoch, near 0
    assert min(lrs[:100]) == pytest.approx(3e-5)              # epoch 1 trains


def test_fractional_warm_up_holds_its_last_rate_to_the_epoch_end_as_mmcv_does() -> None:
    lrs = [lrs[0] for lrs in lrs_seen_by_each_step(RELEASED, 7)]   # W = 17.5 steps
    cosine_2 = 3e-4 * (1 + math.cos(math.pi * 2 / 30)) / 2
    assert lrs[17] == lrs[18] == lrs[20] == pytest.approx(cosine_2 * (0.1 + 0.9 * 17 / 17.5))
    assert lrs[21] == pytest.approx(3e-4 * (1 + math.cos(math.pi * 3 / 30)) / 2)


def test_every_group_follows_the_schedule_at_its_own_multiplier() -> None:
    model = build_model(tiny_cfg())
    cfg = OptimConfig(epochs=5, warmup_epochs=1, lr_mult={"backbone": 0.1})
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    for epoch, step in [(0, 0), (0, 5), (3, 30)]:
        scheduler.step(epoch)
        scheduler.step_update(step)
        head, backbone = (g["lr"] for g in optimizer.param_groups)
        assert backbone == pytest.approx(0.1 * head) and head > 0


@pytest.mark.parametrize("schedule", ["cosine_epoch", "cosine_step"])
def test_timm_schedules_stay_available_and_warm_up_from_zero(schedule: str) -> None:
    cfg = OptimConfig(epochs=10, warmup_epochs=2, schedule=schedule)
    lrs = [lrs[0] for lrs in lrs_seen_by_each_step(cfg, 4)]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(3e-4, rel=0.01)


def groups_by_rate(preset: str, **overrides) -> dict[tuple[float, float], list[str]]:
    cfg = Config.load(CONFIGS / preset, {f"optim.{k}": v for k, v in overrides.items()})
    model = build_model(cfg.model, device="meta")
    return {(g.lr, g.weight_decay): g.names for g in param_groups(model, cfg.optim)}


def test_vitl14_k400_adapters_train_at_a_tenth_and_the_head_at_the_base_rate() -> None:
    groups = groups_by_rate("k400_vitl14_8f.yaml")
    # mmcv's longest key wins: 'backbone' (lr_mult 0.1) outranks 'ln_post' (decay_mult 0), so in
    # the released ViT-L configs the final norm decays too; everything but the head is one group.
    assert list(groups) == [(3e-4, 0.05), (pytest.approx(3e-5), 0.05)]
    head, backbone = groups.values()
    assert head == ["head.weight", "head.bias"]
    assert {"temporal_embedding", "ln_post.weight", "ln_post.bias"} <= set(backbone)
    assert sum("adapter" in n for n in backbone) == 24 * 3 * 4  # s, t, mlp adapters x fc1/fc2 w+b


def test_vitl14_ssv2_sets_the_same_multiplier_and_k700_does_not() -> None:
    assert [lr for lr, _ in groups_by_rate("ssv2_vitl14_8f.yaml")] == [3e-4, pytest.approx(3e-5)]
    assert {lr for lr, _ in groups_by_rate("k700_vitl14_8f.yaml")} == {3e-4}


def test_released_decay_exempts_only_the_final_norm_of_what_trains() -> None:
    groups = groups_by_rate("k400_vitb16_8f.yaml")
    assert groups[(3e-4, 0.0)] == ["ln_post.weight", "ln_post.bias"]
    decayed = groups[(3e-4, 0.05)]
    assert "temporal_embedding" in decayed and "blocks.0.s_adapter.fc1.bias" in decayed


def test_our_decay_rule_stays_an_option() -> None:
    groups = groups_by_rate("k400_vitb16_8f.yaml", no_weight_decay="1d_and_embeddings")
    exempt = groups[(3e-4, 0.0)]
    assert {"temporal_embedding", "ln_post.weight", "head.bias", "blocks.0.s_adapter.fc1.bias"} \
        <= set(exempt)
    assert all(n.endswith(".weight") and "ln_post" not in n for n in groups[(3e-4, 0.05)])


@pytest.mark.parametrize("field, value, message", [
    ("lr_mult", {"adapters": 0.1}, "optim.lr_mult: expected groups among ['backbone', 'head']"),
    ("lr_mult", {"backbone": 0}, "optim.lr_mult.backbone: expected a positive number"),
    ("lr_mult", [0.1], "optim.lr_mult: expected a mapping"),
    ("warmup_ratio", 0, "optim.warmup_ratio: expected a number in (0, 1]"),
    ("no_weight_decay", "biases", "optim.no_weight_decay: expected one of ['released', "),
    ("schedule", "cosine", "optim.schedule: expected one of ['mmcv_cosine', "),
])
def test_optimiser_settings_are_checked_at_load(field: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"optim": {field: value}})
    assert str(err.value).startswith(message)
