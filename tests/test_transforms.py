"""Specification of aim_core.transforms: uint8 clips at the model's size, one augmentation per
clip, CLIP normalisation on the model's device."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from torchvision.transforms import v2

from aim_core.config import Config, ConfigError, DataConfig
from aim_core.randaugment import ImgaugRandAugment
from aim_core.transforms import (CLIP_MEAN, CLIP_STD, build_rand_augment, build_test_transform,
                                 build_train_transform, crop_origins, erasing_fill,
                                 to_model_input, to_tchw)

ALL_AUGMENTATIONS = DataConfig(horizontal_flip=True, rand_augment="rand-m7-n4-mstd0.5-inc1",
                               random_erasing=1.0)
RELEASED_SSV2 = DataConfig(horizontal_flip=False, rand_augment="imgaug-n4-m7", random_erasing=0.25)
RELEASED_L14_K400 = DataConfig(horizontal_flip=True, pca_lighting=0.1)


def constant_clip(rgb: tuple[int, int, int], t: int = 4, h: int = 40, w: int = 60) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (t, h, w, 3)).copy()


def ramp_clip(t: int = 4, h: int = 40, w: int = 60) -> np.ndarray:
    """Brightness grows left to right: a horizontal flip reverses the ramp."""
    row = np.linspace(0, 255, w).astype(np.uint8)
    return np.broadcast_to(row[None, None, :, None], (t, h, w, 3)).copy()


def expected_normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(v - m) / s for v, m, s in zip(rgb, CLIP_MEAN, CLIP_STD)])


# ----------------------------------------------------------------------------------------------
# Normalisation and layout
# ----------------------------------------------------------------------------------------------

def test_clip_statistics_are_on_the_0_255_scale() -> None:
    assert CLIP_MEAN == (122.769, 116.74, 104.04)
    assert CLIP_STD == (68.493, 66.63, 70.321)


def test_model_input_is_normalised_c_t_h_w_floats_of_uint8_clips() -> None:
    clips = torch.from_numpy(np.stack([constant_clip((200, 100, 50)), constant_clip((0, 0, 0))]))
    out = to_model_input(clips)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 40, 60)
    assert torch.allclose(out[0, :, 0, 0, 0], expected_normalised((200, 100, 50)), atol=1e-6)
    assert torch.allclose(out[1, :, 0, 0, 0], expected_normalised((0, 0, 0)), atol=1e-6)
    assert out.flatten(2).std(dim=2).max() == 0
    assert clips.dtype == torch.uint8                       # the input is left as it was


def test_to_tchw_accepts_numpy_and_torch_and_refuses_other_layouts() -> None:
    clip = constant_clip((1, 2, 3))
    assert to_tchw(clip).shape == to_tchw(torch.from_numpy(clip)).shape == (4, 3, 40, 60)
    with pytest.raises(ValueError, match="shape"):
        to_tchw(clip.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="uint8"):
        to_tchw(clip.astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Training transform
# ----------------------------------------------------------------------------------------------

def test_train_output_is_uint8_t_h_w_c_at_the_model_size() -> None:
    out = build_train_transform(ALL_AUGMENTATIONS, 32)(constant_clip((10, 20, 30), t=8))
    assert out.shape == (8, 32, 32, 3) and out.dtype == torch.uint8


def test_train_without_colour_augmentation_keeps_a_constant_colour() -> None:
    transform = build_train_transform(DataConfig(horizontal_flip=True), 32)
    out = transform(constant_clip((200, 100, 50)))
    assert torch.equal(out, torch.tensor([200, 100, 50], dtype=torch.uint8).expand_as(out))


@pytest.mark.parametrize("cfg", [ALL_AUGMENTATIONS, RELEASED_SSV2, RELEASED_L14_K400],
                         ids=["torchvision", "imgaug", "pca_lighting"])
def test_train_augmentation_is_the_same_for_every_frame(cfg: DataConfig) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    clip = np.repeat(frame, 8, axis=0)
    transform = build_train_transform(cfg, 32)
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(clip)
        assert torch.equal(out, out[:1].expand_as(out)), f"frames differ (seed {seed})"


def test_train_transform_draws_different_crops_per_call() -> None:
    transform = build_train_transform(DataConfig(horizontal_flip=False), 32)
    clip = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    torch.manual_seed(0)
    assert not torch.equal(transform(clip), transform(clip))


def _flipped(out: torch.Tensor) -> bool:
    """A ramp that grows left to right, read off the first frame of a (T, H, W, 3) clip."""
    return bool(out[0, :, 0].float().mean() > out[0, :, -1].float().mean())


def test_flip_disabled_never_flips() -> None:
    transform = build_train_transform(DataConfig(horizontal_flip=False), 32)
    torch.manual_seed(0)
    assert not any(_flipped(transform(ramp_clip())) for _ in range(100))


def test_flip_enabled_flips_about_half_the_time() -> None:
    transform = build_train_transform(DataConfig(horizontal_flip=True), 32)
    torch.manual_seed(0)
    flips = sum(_flipped(transform(ramp_clip())) for _ in range(100))
    assert 30 <= flips <= 70


def test_random_erasing_fills_a_box_with_clips_mean_which_normalises_to_zero() -> None:
    transform = build_train_transform(DataConfig(horizontal_flip=False, random_erasing=1.0), 32)
    torch.manual_seed(0)
    out = transform(constant_clip((250, 250, 250)))
    erased = (out == torch.tensor(erasing_fill(), dtype=torch.uint8)).all(dim=-1).all(dim=0)
    assert 0 < erased.float().mean() < 1
    normalised = to_model_input(out[None])[0, :, 0][:, erased]
    assert normalised.abs().max() < 0.01


def test_train_transform_pickles_for_data_loader_workers() -> None:
    transform = pickle.loads(pickle.dumps(build_train_transform(ALL_AUGMENTATIONS, 32)))
    assert transform(constant_clip((1, 2, 3))).shape == (4, 32, 32, 3)


def test_released_ssv2_augmentation_flips_although_the_flip_setting_is_off() -> None:
    transform = build_train_transform(RELEASED_SSV2, 32)
    torch.manual_seed(0)
    flips = sum(_flipped(transform(ramp_clip())) for _ in range(100))
    assert 30 <= flips <= 70
    no_flip = build_train_transform(DataConfig(horizontal_flip=False,
                                               rand_augment="imgaug-n0-m7-noflip"), 32)
    assert not any(_flipped(no_flip(ramp_clip())) for _ in range(50))


def test_pca_lighting_shifts_each_clip_by_one_rgb_offset() -> None:
    transform = build_train_transform(RELEASED_L14_K400, 32)
    torch.manual_seed(0)
    offsets = []
    for _ in range(200):
        out = transform(constant_clip((120, 120, 120)))
        assert (out == out[0, 0, 0]).all()                 # one colour over the whole clip
        offsets.append(out[0, 0, 0].double() - 120)
    spread = torch.stack(offsets).std(dim=0).float()
    # eigvec @ (alpha * eigval), alpha ~ N(0, 0.1): about 3.2 grey levels of std per channel
    assert torch.allclose(spread, torch.full((3,), 3.2), atol=0.8)


@pytest.mark.parametrize("spec, kind, ops, magnitude", [
    ("imgaug-n4-m7", ImgaugRandAugment, 4, 7),
    ("rand-m7-n4-mstd0.5-inc1", v2.RandAugment, 4, 7),
    ("rand-m9-mstd0.5", v2.RandAugment, 2, 9),
    ("rand-m15-n1", v2.RandAugment, 1, 10),
])
def test_rand_augment_values_pick_the_implementation(spec, kind, ops, magnitude) -> None:
    augment = build_rand_augment(spec)
    assert isinstance(augment, kind)
    assert (augment.num_ops, augment.magnitude) == (ops, magnitude)


def test_imgaug_flip_is_on_unless_noflip() -> None:
    assert build_rand_augment("imgaug-n4-m7").flip
    assert not build_rand_augment("imgaug-n4-m7-noflip").flip


@pytest.mark.parametrize("spec", ["augmix-m5", "rand-x3", "rand-m", "rand-m1.2.3", "official",
                                  "imgaug-n4-m31", "imgaug-n4"])
def test_bad_rand_augment_values_fail_at_load_naming_the_field(spec: str) -> None:
    with pytest.raises(ConfigError, match="^data.rand_augment: expected"):
        Config.from_dict({"data": {"rand_augment": spec}})


# ----------------------------------------------------------------------------------------------
# Test transform
# ----------------------------------------------------------------------------------------------

def test_test_single_centre_crop_shape_and_values() -> None:
    out = build_test_transform(DataConfig(test_crops=1), 32)(constant_clip((200, 100, 50)))
    assert out.shape == (1, 4, 32, 32, 3) and out.dtype == torch.uint8
    assert torch.equal(out, torch.tensor([200, 100, 50], dtype=torch.uint8).expand_as(out))


def test_test_centre_crop_takes_the_middle_of_the_long_side() -> None:
    clip = ramp_clip(h=40, w=80)  # resized to 32x64, centre crop covers columns 16..47
    out = build_test_transform(DataConfig(test_crops=1), 32)(clip)
    assert float(out[0, 0, ..., 0].float().mean()) == pytest.approx(127.5, abs=3)


def test_three_crops_cover_left_centre_right_of_a_wide_clip() -> None:
    out = build_test_transform(DataConfig(test_crops=3), 32)(ramp_clip(h=40, w=80))
    assert out.shape == (3, 4, 32, 32, 3)
    means = [float(view[0].float().mean()) for view in out]
    assert means[0] < means[1] < means[2]
    # left starts at column 0 (dark), right ends at the last column (bright)
    assert out[0, 0, :, 0, 0].float().mean() < 8
    assert out[2, 0, :, -1, 0].float().mean() > 247


def test_three_crops_go_top_centre_bottom_on_a_tall_clip() -> None:
    tall = ramp_clip(h=40, w=80).transpose(0, 2, 1, 3).copy()  # brightness grows top to bottom
    out = build_test_transform(DataConfig(test_crops=3), 32)(tall)
    means = [float(view[0].float().mean()) for view in out]
    assert means[0] < means[1] < means[2]


def test_crop_origins() -> None:
    assert crop_origins(224, 298, 224, 1) == [(0, 37)]
    assert crop_origins(224, 298, 224, 3) == [(0, 0), (0, 37), (0, 74)]
    assert crop_origins(298, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]
    with pytest.raises(ValueError):
        crop_origins(224, 224, 224, 2)
