"""Specification of aim_core.randaugment: imgaug's RandAugment (the released SSv2 recipe) in torch.

imgaug's ops are PIL's (``imgaug.augmenters.pillike``), so each op is checked against PIL itself.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from aim_core import randaugment as ra
from aim_core.randaugment import OPS, ImgaugRandAugment, Magnitudes, draw


def frames(t: int = 2, h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    """Noise in frame 0, smooth ramps in the others; every channel reaches 255 somewhere."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(1, t):
        out[i] = np.stack([(xx * 3 + i) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], -1)
    out[:, 0, 0] = 255
    return out


def as_clip(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def as_frames(clip: torch.Tensor) -> np.ndarray:
    return clip.permute(0, 2, 3, 1).numpy()


def with_pil(array: np.ndarray, op) -> np.ndarray:
    return np.stack([np.array(op(Image.fromarray(f))) for f in array])


def test_magnitude_7_of_30_is_imgaugs_mapping() -> None:
    mag = Magnitudes.at(7)  # 7/30 = 23% of each op's range
    assert mag.rotate_deg == pytest.approx(7.0)
    assert mag.shear_deg == pytest.approx(math.degrees(0.3) * 7 / 30)      # 4.01 deg
    assert mag.translate == pytest.approx(0.33 * 7 / 30)                   # 7.7% of the side
    assert mag.posterize_bits == 7                                         # 8 - int(1.4)
    assert mag.solarize_threshold == 197                                   # 256 - int(59.7)
    assert mag.enhance == pytest.approx(0.21)                              # factors 0.79 / 1.21
    assert mag.cutout == pytest.approx(20 / 32 * 7 / 30)                   # 14.6% of the height
    assert mag.crop == pytest.approx(7 / 224)                              # up to 3.1% per side


def test_magnitude_ends_of_the_scale() -> None:
    weakest, strongest = Magnitudes.at(0), Magnitudes.at(30)
    assert (weakest.rotate_deg, weakest.posterize_bits, weakest.solarize_threshold,
            weakest.enhance, weakest.cutout) == (0, 8, 256, 0, 0)
    assert strongest.rotate_deg == 30 and strongest.posterize_bits == 2
    assert strongest.solarize_threshold == 0 and strongest.enhance == pytest.approx(0.9)
    assert strongest.cutout == pytest.approx(20 / 32) and strongest.translate == pytest.approx(0.33)


@pytest.mark.parametrize("factor", [0.79, 1.21])
@pytest.mark.parametrize("ours, pil", [
    (ra.enhance_color, ImageEnhance.Color), (ra.enhance_contrast, ImageEnhance.Contrast),
    (ra.enhance_brightness, ImageEnhance.Brightness),
    (ra.enhance_sharpness, ImageEnhance.Sharpness),
], ids=["color", "contrast", "brightness", "sharpness"])
def test_enhance_ops_equal_pil(ours, pil, factor: float) -> None:
    array = frames()
    assert np.array_equal(as_frames(ours(as_clip(array), factor)),
                          with_pil(array, lambda im: pil(im).enhance(factor)))


@pytest.mark.parametrize("ours, pil", [
    (ra.autocontrast, ImageOps.autocontrast), (ra.equalize, ImageOps.equalize),
    (ra.invert, ImageOps.invert),
    (lambda c: ra.posterize(c, 7), lambda im: ImageOps.posterize(im, 7)),
    (lambda c: ra.solarize(c, 197), lambda im: ImageOps.solarize(im, 197)),
    (ra.blur, lambda im: im.filter(ImageFilter.BLUR)),
    (ra.smooth, lambda im: im.filter(ImageFilter.SMOOTH)),
], ids=["autocontrast", "equalize", "invert", "posterize", "solarize", "blur", "smooth"])
def test_pixel_ops_equal_pil(ours, pil) -> None:
    array = frames()
    array[0] = array[0] // 2 + 40  # a frame autocontrast has something to stretch
    array[0, 0, 0] = 255           # equalize: imgaug's step counts 255s, PIL's the brightest value
    assert np.array_equal(as_frames(ours(as_clip(array))), with_pil(array, pil))


@pytest.mark.parametrize("kwargs", [
    {"rotate": 7.0, "center": (0.5, 0.5)}, {"rotate": -7.0, "center": (0.5, 0.5)},
    {"shear_x": 4.01}, {"shear_y": -4.01}, {"tx": 0.077 * 80}, {"ty": -0.077 * 60},
], ids=["rotate+", "rotate-", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_affine_ops_equal_pils_nearest_transform_with_grey_fill(kwargs) -> None:
    array = frames()
    inverse = ra.affine_inverse(60, 80, **kwargs)
    data = tuple(inverse[:2].flatten().tolist())
    expected = with_pil(array, lambda im: im.transform(im.size, Image.AFFINE, data,
                                                       resample=Image.NEAREST,
                                                       fillcolor=(128, 128, 128)))
    out = as_frames(ra.warp_affine(as_clip(array), inverse))
    assert np.array_equal(out, expected) and (out == 128).all(-1).any()


def test_cutout_is_a_grey_square_of_the_height_fraction() -> None:
    clip = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
    out = ra.cutout(clip, 0.5, 0.5, Magnitudes.at(7).cutout)   # side 32.7 px about (112, 112)
    grey = (out == 128).all(dim=1)
    assert torch.equal(grey[0], grey[1])
    rows, cols = grey[0].nonzero().unbind(1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (95, 127, 95, 127)


def test_crop_takes_up_to_m_pixels_of_224_per_side_and_keeps_the_size() -> None:
    choices = [draw(4, 7) for _ in range(300)]
    crops = np.array([c.crop for c in choices])
    assert crops.min() >= 0 and crops.max() <= 7 / 224 and crops.max() > 0.9 * 7 / 224
    ramp = torch.arange(224, dtype=torch.uint8).view(1, 1, 1, 224).expand(1, 3, 224, 224)
    out = ra.crop_and_resize(ramp, (0.0, 0.0, 0.0, 7 / 224))    # 7 px off the left
    assert out.shape == ramp.shape and out[0, 0, 0, 0] == 7 and out[0, 0, 0, -1] == 223


def test_flip_comes_with_probability_one_half_and_can_be_left_out() -> None:
    torch.manual_seed(0)
    assert 160 <= sum(draw(4, 7).flip for _ in range(400)) <= 240
    assert not any(draw(4, 7, flip=False).flip for _ in range(100))
    ramp = torch.arange(64, dtype=torch.uint8).view(1, 1, 1, 64).expand(2, 3, 8, 64)
    flipped = ImgaugRandAugment(0, 0).apply(ramp, ra.ClipDraw(True, (0, 0, 0, 0), []))
    assert torch.equal(flipped, ramp.flip(-1))


def test_each_clip_gets_n_distinct_ops_in_random_order() -> None:
    torch.manual_seed(0)
    picks = [[name for name, _ in draw(4, 7).ops] for _ in range(500)]
    assert all(len(set(p)) == 4 for p in picks)
    assert {name for p in picks for name in p} == set(OPS)
    assert len({tuple(p) for p in picks}) > 450


def test_every_frame_of_a_clip_gets_the_same_augmentation() -> None:
    frame = frames(t=1, h=56, w=56)
    clip = as_clip(np.repeat(frame, 8, axis=0))
    augment = pickle.loads(pickle.dumps(ImgaugRandAugment(4, 7)))
    for seed in range(30):
        torch.manual_seed(seed)
        out = augment(clip)
        assert out.dtype == torch.uint8 and out.shape == clip.shape
        assert torch.equal(out, out[:1].expand_as(out)), f"frames differ (seed {seed})"
