"""Load the released AIM checkpoints (mmaction2 ``.pth`` files of the official repository).

Two backbone layouts were released: ``ViT_CLIP`` keeps CLIP's names (``conv1``,
``transformer.resblocks.{i}``, ``ln_pre``), ``ViT_ImageNet`` (``vit_imagenet.py``, the ImageNet-21K
models) timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.norm1``); both
carry the adapters as ``S_Adapter.D_fc1`` and so on, and the I3D head ``cls_head.fc_cls``. This
module is the filter that maps them onto :class:`aim_core.model.VideoClassifier`, reading the
architecture from the tensor shapes and the adapter scale from the table of released configs.

Files are read with ``weights_only=True`` and never unpickled in full. mmcv's ``EvalHook`` stores
the best score, a numpy float64, in the checkpoint's ``meta``: exactly the numpy globals that
rebuild a float64 scalar are allowed, and any other global is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import BackboneIdentity, convert_to_vit_layout
from .storage import file_sha256
from .checkpoint import ModelFileError, short_reason
from .config import AdapterConfig, BackboneConfig, ModelConfig
from .model import VideoClassifier
from .vit import ViTSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfficialLayout:
    """How one released backbone names its tensors, and the numerics its code fixes."""

    name: str
    source: str                 # the library whose naming it follows
    patch_key: str
    positions_key: str
    block_prefix: str
    mlp_key: str                # first MLP layer, inside a block
    act: str
    ln_eps: float


CLIP_LAYOUT = OfficialLayout("clip", "open_clip", "backbone.conv1.weight",
                             "backbone.positional_embedding", "backbone.transformer.resblocks.",
                             "mlp.c_fc.weight", act="quick_gelu", ln_eps=1e-5)
IMAGENET_LAYOUT = OfficialLayout("imagenet", "timm", "backbone.patch_embed.proj.weight",
                                 "backbone.pos_embed", "backbone.blocks.", "mlp.fc1.weight",
                                 act="gelu", ln_eps=1e-6)

# adapter_scale of each released config (configs/recognition/vit/ of the official repository,
# taoyang1122/adapt-image-models), keyed by what a checkpoint's shapes tell: (layout, width,
# layers, temporal adapters, classes). Frames do not matter: 8/16/32-frame models share a config.
RELEASED_ADAPTER_SCALES = {
    ("clip", 768, 12, 1, 400): 0.5,        # vitclip_base_k400.py
    ("clip", 768, 12, 1, 700): 0.5,        # vitclip_base_k700.py
    ("clip", 768, 12, 1, 48): 0.5,         # vitclip_base_diving48.py
    ("clip", 768, 12, 2, 174): 1.0,        # vitclip_base_sthv2.py (num_tadapter=2)
    ("clip", 1024, 24, 1, 400): 0.5,       # vitclip_large_k400.py
    ("clip", 1024, 24, 1, 700): 0.5,       # vitclip_large_k700.py
    ("clip", 1024, 24, 1, 48): 0.5,        # vitclip_large_diving48.py
    ("clip", 1024, 24, 1, 174): 1.0,       # vitclip_large_sthv2.py (one temporal adapter)
    ("imagenet", 768, 12, 1, 400): 0.5,    # vit_imagenet_k400.py
    ("imagenet", 768, 12, 2, 174): 1.0,    # vit_imagenet_ssv2.py (num_tadapter=2)
}

_ADAPTERS = {"S_Adapter": "s_adapter", "T_Adapter_in": "t_adapter_in", "T_Adapter": "t_adapter",
             "MLP_Adapter": "mlp_adapter"}
_ADAPTER_KEY = re.compile(rf"^(blocks\.\d+\.)({'|'.join(_ADAPTERS)})\.D_(.+)$")


def _numpy_scalar_globals() -> list[Any]:
    """What unpickling a numpy float64 scalar needs and no more: the scalar constructor under its
    numpy 1 and numpy 2 names (the released files were written with numpy 1), ``numpy.dtype`` and
    the float64 dtype class, whose state the pickle sets. Other dtypes stay refused."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, type(np.dtype(np.float64))]


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a released checkpoint (keys without a DDP ``module.`` prefix), unpickled
    with ``weights_only=True`` plus numpy float64 scalars, which mmcv leaves in ``meta``."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ModelFileError(f"{path}: refused to unpickle it with weights_only=True, which "
                             f"admits tensors, plain values and numpy float64 scalars only "
                             f"({short_reason(exc)})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if isinstance(state, dict):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not isinstance(state, dict) or official_layout(state) is None:
        raise ModelFileError(f"{path} is not an official AIM checkpoint (no "
                             f"{CLIP_LAYOUT.patch_key} or {IMAGENET_LAYOUT.patch_key})")
    return state


def official_layout(state: dict[str, torch.Tensor]) -> OfficialLayout | None:
    for layout in (CLIP_LAYOUT, IMAGENET_LAYOUT):
        if layout.patch_key in state:
            return layout
    return None


def released_adapter_scale(layout: str, width: int, layers: int, temporal_adapters: int,
                           classes: int) -> float:
    """The adapter scale of the released config with these shapes. Other shapes get the rule the
    table follows for Kinetics and the two-temporal-adapter SSv2 models (0.5, or 1.0 with two)."""
    key = (layout, width, layers, temporal_adapters, classes)
    if key in RELEASED_ADAPTER_SCALES:
        return RELEASED_ADAPTER_SCALES[key]
    scale = 1.0 if temporal_adapters == 2 else 0.5
    log.info("no released AIM config has %s; adapter scale %s (pass scale= to change it)", key,
             scale)
    return scale


def official_model_config(state: dict[str, torch.Tensor], **overrides: Any) -> ModelConfig:
    """The architecture a released checkpoint encodes, read from its tensor shapes."""
    layout = _layout(state)
    width, _, patch, _ = state[layout.patch_key].shape
    positions = state[layout.positions_key].shape[-2]
    blocks = _block_keys(state, layout)
    layers = 1 + max(blocks)
    adapted = sorted(i for i, rests in blocks.items() if "S_Adapter.D_fc1.weight" in rests)
    if not adapted:
        raise ModelFileError("an official checkpoint without S_Adapter weights is no AIM model")
    hidden = state[f"{layout.block_prefix}{adapted[0]}.S_Adapter.D_fc1.weight"].shape[0]
    temporal = 2 if any("T_Adapter_in." in k for k in state) else 1
    classes = state["cls_head.fc_cls.weight"].shape[0]
    adapter = AdapterConfig(ratio=hidden / width,
                            scale=released_adapter_scale(layout.name, width, layers, temporal,
                                                         classes),
                            placement="all" if len(adapted) == layers else adapted,
                            temporal_adapters=temporal)
    name = "official-aim-vit" if layout is CLIP_LAYOUT else "official-aim-vit-imagenet"
    cfg = ModelConfig(
        variant="aim",
        backbone=BackboneConfig(source=layout.source, name=f"{name}-w{width}-p{patch}",
                                pretrained=None, act=layout.act),
        adapter=adapter, num_classes=classes,
        num_frames=state["backbone.temporal_embedding"].shape[1],
        image_size=int(math.isqrt(positions - 1)) * patch, drop_path=0.0,
    )
    adapter_fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    adapter_over = {k: v for k, v in overrides.items() if k in adapter_fields}
    model_over = {k: v for k, v in overrides.items() if k not in adapter_fields}
    if adapter_over:
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, **adapter_over))
    return dataclasses.replace(cfg, **model_over)


def official_spec(state: dict[str, torch.Tensor], image_size: int) -> ViTSpec:
    layout = _layout(state)
    width, _, patch, _ = state[layout.patch_key].shape
    layers = 1 + max(_block_keys(state, layout))
    mlp = state[f"{layout.block_prefix}0.{layout.mlp_key}"].shape[0]
    return ViTSpec(width=width, layers=layers, heads=width // 64, patch_size=patch,
                   image_size=image_size, mlp_ratio=mlp / width, act=layout.act,
                   ln_eps=layout.ln_eps,
                   patch_bias=layout.patch_key.replace(".weight", ".bias") in state,
                   pre_norm="backbone.ln_pre.weight" in state)


def convert_official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names to ours: the backbone through the CLIP / timm filter of
    :func:`aim_core.backbones.convert_to_vit_layout`, then the adapters, time and the head."""
    layout = _layout(state)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                if k.startswith("backbone.")}
    if layout is IMAGENET_LAYOUT:  # vit_imagenet.py calls timm's final ``norm`` ln_post
        backbone = {k.replace("ln_post.", "norm.", 1) if k.startswith("ln_post.") else k: v
                    for k, v in backbone.items()}
    out = {}
    for key, value in convert_to_vit_layout(backbone).items():
        if m := _ADAPTER_KEY.match(key):
            key = f"{m.group(1)}{_ADAPTERS[m.group(2)]}.{m.group(3)}"
        out[key] = value
    out["temporal_embedding"] = backbone["temporal_embedding"]
    out["head.weight"] = state["cls_head.fc_cls.weight"]
    out["head.bias"] = state["cls_head.fc_cls.bias"]
    return out


def load_official_checkpoint(path: str | Path, **overrides: Any) -> VideoClassifier:
    """A ready model in eval mode from a released AIM ``.pth`` (either backbone layout).

    Width, depth, patch, frames, classes, ratio and the number of temporal adapters come from the
    shapes; heads = width / 64; the adapter scale from :data:`RELEASED_ADAPTER_SCALES`.
    ``overrides`` replace :class:`ModelConfig` or :class:`AdapterConfig` fields (e.g. ``scale=0.5``).
    """
    state = read_official_state(path)
    cfg = official_model_config(state, **overrides)
    identity = BackboneIdentity("official-aim", cfg.backbone.name, str(path),
                                file_sha256(Path(path)), False)
    model = VideoClassifier(cfg, official_spec(state, cfg.image_size), identity)
    try:
        result = model.load_state_dict(convert_official_state(state), strict=False)
    except (KeyError, RuntimeError) as exc:  # a tensor missing or of another shape
        raise ModelFileError(f"{path}: weights do not fit the architecture its shapes give "
                             f"({short_reason(exc)})") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelFileError(f"{path}: checkpoint does not match the inferred architecture; "
                             f"missing {result.missing_keys[:5]}, unexpected "
                             f"{result.unexpected_keys[:5]}")
    return model.eval()


def _layout(state: dict[str, torch.Tensor]) -> OfficialLayout:
    layout = official_layout(state)
    if layout is None:
        raise ModelFileError("not an official AIM state dict (neither the CLIP nor the "
                             "ImageNet-21K backbone layout)")
    return layout


def _block_keys(state: dict[str, torch.Tensor], layout: OfficialLayout) -> dict[int, set[str]]:
    """Each block's index and the key names inside it."""
    pattern = re.compile(rf"^{re.escape(layout.block_prefix)}(\d+)\.(.+)$")
    blocks: dict[int, set[str]] = {}
    for key in state:
        if m := pattern.match(key):
            blocks.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not blocks:
        raise ModelFileError(f"an official checkpoint without {layout.block_prefix}* weights")
    return blocks
