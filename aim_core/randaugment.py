"""imgaug's RandAugment, as the released SSv2 recipe runs it, on uint8 ``(T, C, H, W)`` clips.

The released SSv2 configs augment with ``Imgaug(transforms=[dict(type='RandAugment', n=4, m=7)])``
(taoyang1122/adapt-image-models, ``configs/recognition/vit/vitclip_*_sthv2.py``), and mmaction's
``Imgaug`` calls ``to_deterministic()`` once per clip, so every frame gets the same ops with the
same parameters. imgaug 0.4's ``RandAugment`` (``imgaug/augmenters/collections.py``) is:

1. a horizontal flip with probability 0.5 (always part of it, whatever the pipeline's ``Flip``);
2. a crop of each side by ``Uniform(0, m) / 224`` of that side, resized back (linear);
3. ``n`` distinct ops out of 18, in random order: identity, autocontrast, equalize, invert, rotate,
   posterize, solarize, color, contrast, brightness, sharpness, shear x/y, translate x/y, cutout,
   blur, smooth; their magnitudes scale with ``m / 30`` (:class:`Magnitudes`).

The ops are PIL's (imgaug's ``pillike``), written here in torch and NumPy: nearest-neighbour
affine warps filled with grey 128, ``ImageEnhance`` blends, ``ImageOps`` look-up tables,
``ImageFilter`` kernels, each equal to PIL's output bit for bit (tests/test_randaugment.py);
equalize follows imgaug's own variant. Autocontrast and equalize work per frame and channel, as
PIL does per image. The crop's resize is torchvision's bilinear where imgaug calls OpenCV's, which
can differ by a grey level. Randomness comes from torch's global generator, as torchvision's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

M_MAX = 30          # imgaug's magnitude scale
CROP_BASE = 224     # imgaug crops up to m pixels of a 224-pixel side
FILL = 128          # imgaug's RandAugment cval: grey for pixels an affine op or cutout uncovers

OPS = ("identity", "autocontrast", "equalize", "invert", "rotate", "posterize", "solarize",
       "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x",
       "translate_y", "cutout", "blur", "smooth")


@dataclass(frozen=True)
class Magnitudes:
    """Each op's strength at magnitude ``m`` of 30, as imgaug's RandAugment computes it."""

    rotate_deg: float           # +-m degrees about the centre
    shear_deg: float            # +-m/30 of 0.3 rad (17.2 deg), about the top-left corner
    translate: float            # +-0.33 m/30 of the side
    posterize_bits: int         # 8 - int(6 m/30) bits kept
    solarize_threshold: int     # 256 - int(256 m/30): values at or above it are inverted
    enhance: float              # ImageEnhance factor 1 +- 0.9 m/30, within [0.1, 1.9]
    cutout: float               # square of side 20/32 m/30 of the height
    crop: float                 # each side cropped by up to m/224 of it

    @classmethod
    def at(cls, m: int) -> "Magnitudes":
        def scaled(maxval: float) -> float:  # imgaug's _float_parameter: m * (maxval / 30)
            return m * (maxval / M_MAX)

        return cls(rotate_deg=scaled(30), shear_deg=scaled(math.degrees(0.3)),
                   translate=scaled(0.33), posterize_bits=8 - min(int(scaled(6)), 6),
                   solarize_threshold=min(max(256 - int(scaled(256)), 0), 256),
                   enhance=scaled(0.9), cutout=min(scaled(20 / 32), 20 / 32),
                   crop=m / CROP_BASE)


@dataclass
class ClipDraw:
    """The random choices for one clip: flip, crop per side (top, right, bottom, left, as
    fractions), and the ops in the order they run with their signed parameters."""

    flip: bool
    crop: tuple[float, float, float, float]
    ops: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)


def _sign() -> float:
    return 1.0 if torch.rand(()) < 0.5 else -1.0


def _op_args(name: str, mag: Magnitudes) -> tuple[float, ...]:
    if name == "rotate":
        return (_sign() * mag.rotate_deg,)
    if name in ("shear_x", "shear_y"):
        return (_sign() * mag.shear_deg,)
    if name in ("translate_x", "translate_y"):
        return (_sign() * mag.translate,)
    if name in ("color", "contrast", "brightness", "sharpness"):
        return (min(max(1.0 + _sign() * mag.enhance, 0.1), 1.9),)
    if name == "cutout":
        return (float(torch.rand(())), float(torch.rand(())))  # centre x, y as fractions
    return ()


def draw(num_ops: int, magnitude: int, flip: bool = True) -> ClipDraw:
    """One clip's random choices: a flip with probability 0.5 (when ``flip``), the crop, and
    ``num_ops`` distinct ops in random order."""
    mag = Magnitudes.at(magnitude)
    flip = flip and bool(torch.rand(()) < 0.5)
    crop = tuple(float(v) for v in torch.rand(4) * mag.crop)
    chosen = torch.randperm(len(OPS))[:min(num_ops, len(OPS))].tolist()
    return ClipDraw(flip, crop, [(OPS[i], _op_args(OPS[i], mag)) for i in chosen])


# ----------------------------------------------------------------------------------------------
# PIL's ops on uint8 (T, C, H, W), bit-exact; per-pixel ones as look-up tables
# ----------------------------------------------------------------------------------------------

def apply_lut(clip: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Map uint8 values through ``lut``: ``(256,)`` for the whole clip, or ``(T, C, 256)``."""
    src = clip.contiguous().numpy()
    table = lut.numpy()
    if table.ndim == 1:
        return torch.from_numpy(np.take(table, src))
    out = np.empty_like(src)
    for t, c in np.ndindex(src.shape[:2]):
        np.take(table[t, c], src[t, c], out=out[t, c])
    return torch.from_numpy(out)


_LEVELS = torch.arange(256, dtype=torch.float32)


def _blend_lut(degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    """``PIL.Image.blend(degenerate, x, factor)`` for every uint8 ``x`` against constant
    ``degenerate`` values ``(...,)``: float32 ``d + factor (x - d)``, clipped, truncated."""
    d = degenerate.float().unsqueeze(-1)
    return (d + torch.tensor(factor) * (_LEVELS - d)).clamp_(0, 255).to(torch.uint8)


def blend(degenerate: torch.Tensor, clip: torch.Tensor, factor: float) -> torch.Tensor:
    """``PIL.Image.blend(degenerate, clip, factor)`` in float32, as ``ImageEnhance`` uses it."""
    d = degenerate.float()
    return clip.float().sub_(d).mul_(torch.tensor(factor)).add_(d).clamp_(0, 255).to(torch.uint8)


def grayscale(clip: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L, ``(19595 R + 38470 G + 7471 B + 0x8000) >> 16`` (exact in float32: every
    partial sum stays below 2**24), as float ``(T, 1, H, W)``."""
    r, g, b = clip.float().unbind(1)
    return (r.mul_(19595).add_(g.mul_(38470)).add_(b.mul_(7471)).add_(0x8000)
            .div_(65536).floor_().unsqueeze(1))


def enhance_color(clip: torch.Tensor, factor: float) -> torch.Tensor:
    return blend(grayscale(clip), clip, factor)


def enhance_contrast(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with each frame's mean grey level, rounded as PIL's ``int(mean + 0.5)``."""
    mean = (grayscale(clip).double().mean(dim=(1, 2, 3)) + 0.5).floor()
    return apply_lut(clip, _blend_lut(mean, factor).unsqueeze(1).expand(-1, clip.shape[1], -1))


def enhance_brightness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    return apply_lut(clip, _blend_lut(torch.zeros(()), factor))


def enhance_sharpness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    return blend(smooth(clip), clip, factor)


def _box(x: torch.Tensor, size: int) -> torch.Tensor:
    """Sums over ``size x size`` windows (valid positions only), in x's integer type."""
    h, w = x.shape[-2:]
    rows = sum(x[..., i:h - size + 1 + i, :] for i in range(size))
    return sum(rows[..., :, i:w - size + 1 + i] for i in range(size))


def _filtered(clip: torch.Tensor, radius: int, inner: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.filter``: ``inner`` (the rounded kernel response on the interior) with the
    border pixels the kernel cannot reach left unchanged."""
    h, w = clip.shape[-2:]
    out = clip.clone()
    out[..., radius:h - radius, radius:w - radius] = inner.to(torch.uint8)
    return out


def smooth(clip: torch.Tensor) -> torch.Tensor:
    """``ImageFilter.SMOOTH``: 3x3 ones with 5 in the centre, / 13, rounded (never a tie)."""
    if min(clip.shape[-2:]) < 3:
        return clip.clone()
    x = clip.to(torch.int16)
    total = _box(x, 3) + 4 * x[..., 1:-1, 1:-1]
    return _filtered(clip, 1, torch.div(2 * total + 13, 26, rounding_mode="floor"))


def blur(clip: torch.Tensor) -> torch.Tensor:
    """``ImageFilter.BLUR``: the 5x5 ring of ones, / 16, rounded half up."""
    if min(clip.shape[-2:]) < 5:
        return clip.clone()
    x = clip.to(torch.int16)
    total = _box(x, 5) - _box(x[..., 1:-1, 1:-1], 3)
    return _filtered(clip, 2, (total + 8) >> 4)


def autocontrast(clip: torch.Tensor) -> torch.Tensor:
    """Stretch each frame's channels to 0..255 (imgaug's ``autocontrast``, cutoff 0): the table
    ``int(i * scale + offset)`` in float64, identity for a single-valued channel."""
    lo = clip.amin(dim=(2, 3)).double().unsqueeze(-1)
    hi = clip.amax(dim=(2, 3)).double().unsqueeze(-1)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # not 255.0 / t: a reciprocal
    levels = torch.arange(256, dtype=torch.float64)
    lut = (levels * scale + (-lo * scale)).clamp(0, 255).to(torch.uint8)
    return apply_lut(clip, torch.where(hi > lo, lut, levels.to(torch.uint8)))


def equalize(clip: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per frame and channel, imgaug's ``_equalize_no_pil_`` (what it runs
    on frames above 64x64): PIL's look-up table with ``step = (pixels - count of 255) // 255``."""
    src = clip.contiguous().numpy()
    hist = torch.from_numpy(np.stack([np.bincount(src[t, c].ravel(), minlength=256)
                                      for t, c in np.ndindex(src.shape[:2])]))
    hist = hist.view(*src.shape[:2], 256)
    step = hist[..., :-1].sum(-1, keepdim=True) // 255
    cum = torch.cat([torch.zeros_like(hist[..., :1]), hist.cumsum(-1)[..., :-1]], dim=-1)
    lut = ((step // 2 + cum) // step.clamp(min=1)).clamp(max=255)
    identity = ((hist > 0).sum(-1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(identity, torch.arange(256).expand_as(lut), lut)
    return apply_lut(clip, lut.to(torch.uint8))


def invert(clip: torch.Tensor) -> torch.Tensor:
    return 255 - clip


def posterize(clip: torch.Tensor, bits: int) -> torch.Tensor:
    return clip & (0xFF ^ ((1 << (8 - bits)) - 1))


def solarize(clip: torch.Tensor, threshold: int) -> torch.Tensor:
    levels = torch.arange(256)
    return apply_lut(clip, torch.where(levels >= threshold, 255 - levels, levels).to(torch.uint8))


def affine_inverse(h: int, w: int, rotate: float = 0.0, shear_x: float = 0.0,
                   shear_y: float = 0.0, tx: float = 0.0, ty: float = 0.0,
                   center: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """PIL's output-to-input matrix for imgaug's ``pillike.warp_affine`` (degrees, pixels; shear
    through ``tanh`` as imgaug writes it)."""
    def mat(a, b, c, d, e, f):
        return torch.tensor([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]], dtype=torch.float64)

    cx, cy = w * center[0], h * center[1]
    r = -math.radians(rotate)
    forward = (mat(1, 0, cx, 0, 1, cy)
               @ mat(math.cos(r), math.sin(r), 0, -math.sin(r), math.cos(r), 0)
               @ mat(1, math.tanh(math.radians(shear_x)), 0, math.tanh(math.radians(shear_y)), 1, 0)
               @ mat(1, 0, tx, 0, 1, ty) @ mat(1, 0, -cx, 0, 1, -cy))
    return torch.linalg.inv(forward)


def warp_affine(clip: torch.Tensor, inverse: torch.Tensor, fill: int = FILL) -> torch.Tensor:
    """``PIL.Image.transform(AFFINE, NEAREST)``: each output pixel centre maps through ``inverse``
    to the input pixel it falls in, in PIL's 16.16 fixed-point arithmetic; pixels from outside the
    frame get ``fill``."""
    t, c, h, w = clip.shape
    a = inverse[:2].tolist()

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    ys = torch.arange(h, dtype=torch.int64).view(h, 1)
    xs = torch.arange(w, dtype=torch.int64).view(1, w)
    src_x = (fix(a[0][2] + a[0][0] * 0.5 + a[0][1] * 0.5) + ys * fix(a[0][1])
             + xs * fix(a[0][0])) >> 16
    src_y = (fix(a[1][2] + a[1][0] * 0.5 + a[1][1] * 0.5) + ys * fix(a[1][1])
             + xs * fix(a[1][0])) >> 16
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    index = torch.where(inside, src_y * w + src_x, h * w).flatten().numpy()  # h*w: the fill
    frames = clip.reshape(t * c, h * w).numpy()
    padded = np.concatenate([frames, np.full((t * c, 1), fill, np.uint8)], axis=1)
    return torch.from_numpy(np.take(padded, index, axis=1)).view(t, c, h, w)


def cutout(clip: torch.Tensor, x: float, y: float, size: float) -> torch.Tensor:
    """A grey square of side ``size`` x height centred at ``(x, y)`` (fractions), imgaug's
    ``Cutout(squared=True)``: corners truncated to pixels and clipped to the frame."""
    _, _, h, w = clip.shape
    half = size * h / 2
    x1, x2 = (min(max(int(v), 0), w) for v in (x * w - half, x * w + half))
    y1, y2 = (min(max(int(v), 0), h) for v in (y * h - half, y * h + half))
    out = clip.clone()
    out[..., y1:y2, x1:x2] = FILL
    return out


def crop_and_resize(clip: torch.Tensor, crop: tuple[float, float, float, float]) -> torch.Tensor:
    """Crop ``(top, right, bottom, left)`` fractions (rounded half to even to pixels, as imgaug's
    ``Crop(percent=...)``) and resize back to the input size, bilinear (imgaug's ``linear``)."""
    _, _, h, w = clip.shape
    top, right, bottom, left = (round(s * f) for s, f in zip((h, w, h, w), crop))
    if not (top or right or bottom or left):
        return clip
    part = clip[..., top:max(h - bottom, top + 1), left:max(w - right, left + 1)]
    return F.resize(part, [h, w], interpolation=F.InterpolationMode.BILINEAR, antialias=False)


def _geometric(name: str, clip: torch.Tensor, value: float) -> torch.Tensor:
    h, w = clip.shape[-2:]
    kwargs = {"rotate": {"rotate": value, "center": (0.5, 0.5)}, "shear_x": {"shear_x": value},
              "shear_y": {"shear_y": value}, "translate_x": {"tx": value * w},
              "translate_y": {"ty": value * h}}[name]
    return warp_affine(clip, affine_inverse(h, w, **kwargs))


def apply_op(name: str, args: tuple[float, ...], clip: torch.Tensor,
             mag: Magnitudes) -> torch.Tensor:
    """One of :data:`OPS` on a uint8 ``(T, C, H, W)`` clip."""
    plain: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "identity": lambda x: x, "autocontrast": autocontrast, "equalize": equalize,
        "invert": invert, "blur": blur, "smooth": smooth,
        "posterize": lambda x: posterize(x, mag.posterize_bits),
        "solarize": lambda x: solarize(x, mag.solarize_threshold)}
    enhance = {"color": enhance_color, "contrast": enhance_contrast,
               "brightness": enhance_brightness, "sharpness": enhance_sharpness}
    if name in plain:
        return plain[name](clip)
    if name in enhance:
        return enhance[name](clip, args[0])
    if name == "cutout":
        return cutout(clip, args[0], args[1], mag.cutout)
    return _geometric(name, clip, args[0])


class ImgaugRandAugment:
    """imgaug's ``RandAugment(n=num_ops, m=magnitude)`` once per clip: flip, crop, then the ops;
    ``flip=False`` leaves its built-in flip out (direction-dependent classes).

    Takes and returns uint8 ``(T, C, H, W)``; picklable, for data-loading workers.
    """

    def __init__(self, num_ops: int, magnitude: int, flip: bool = True) -> None:
        self.num_ops, self.magnitude, self.flip = num_ops, magnitude, flip
        self.magnitudes = Magnitudes.at(magnitude)

    def apply(self, clip: torch.Tensor, choices: ClipDraw) -> torch.Tensor:
        clip = clip.as_subclass(torch.Tensor)
        if choices.flip:
            clip = clip.flip(-1)
        clip = crop_and_resize(clip, choices.crop)
        for name, args in choices.ops:
            clip = apply_op(name, args, clip, self.magnitudes)
        return clip

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.apply(clip, draw(self.num_ops, self.magnitude, self.flip))

    def __repr__(self) -> str:
        return (f"ImgaugRandAugment(n={self.num_ops}, m={self.magnitude} of {M_MAX}, "
                f"flip={self.flip})")
