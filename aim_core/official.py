"""Load the released AIM checkpoints (mmaction2 ``.pth`` of the official repository).

The official ``ViT_CLIP`` backbone keeps CLIP's names (``transformer.resblocks.{i}``,
``S_Adapter.D_fc1``) and the I3D head ``cls_head.fc_cls``; this module is the filter that maps them
onto :class:`aim_core.model.VideoClassifier`, reading the architecture from the tensor shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import torch

from .backbones import BackboneError, BackboneIdentity, file_sha256
from .config import AdapterConfig, BackboneConfig, ModelConfig
from .model import VideoClassifier
from .vit import ViTSpec

_ADAPTERS = {"S_Adapter": "s_adapter", "T_Adapter_in": "t_adapter_in", "T_Adapter": "t_adapter",
             "MLP_Adapter": "mlp_adapter"}
_BLOCK_KEY = re.compile(r"^backbone\.transformer\.resblocks\.(\d+)\.(.+)$")


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneError(f"cannot read {path} with weights_only=True: {exc}") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "backbone.conv1.weight" not in state:
        raise BackboneError(f"{path} is not an official AIM checkpoint (no backbone.conv1.weight)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_model_config(state: dict[str, torch.Tensor], **overrides: Any) -> ModelConfig:
    """The architecture a released checkpoint encodes, read from its tensor shapes."""
    width, _, patch, _ = state["backbone.conv1.weight"].shape
    positions = state["backbone.positional_embedding"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    adapted = sorted({int(m.group(1)) for k in state
                      if (m := _BLOCK_KEY.match(k)) and "S_Adapter" in m.group(2)})
    hidden = state[f"backbone.transformer.resblocks.{adapted[0]}.S_Adapter.D_fc1.weight"].shape[0]
    two_temporal = any("T_Adapter_in" in k for k in state)
    adapter = AdapterConfig(ratio=hidden / width, scale=1.0 if two_temporal else 0.5,
                            placement="all" if len(adapted) == layers else adapted,
                            temporal_adapters=2 if two_temporal else 1)
    cfg = ModelConfig(
        variant="aim",
        backbone=BackboneConfig(source="open_clip", name=f"official-aim-vit-w{width}-p{patch}",
                                pretrained=None, act="quick_gelu"),
        adapter=adapter,
        num_classes=state["cls_head.fc_cls.weight"].shape[0],
        num_frames=state["backbone.temporal_embedding"].shape[1],
        image_size=int(math.isqrt(positions - 1)) * patch,
        drop_path=0.0,
    )
    adapter_fields = {f.name for f in dataclasses.fields(AdapterConfig)}
    adapter_over = {k: v for k, v in overrides.items() if k in adapter_fields}
    model_over = {k: v for k, v in overrides.items() if k not in adapter_fields}
    if adapter_over:
        cfg = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, **adapter_over))
    return dataclasses.replace(cfg, **model_over)


def official_spec(state: dict[str, torch.Tensor], image_size: int) -> ViTSpec:
    width, _, patch, _ = state["backbone.conv1.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)))
    mlp = state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    return ViTSpec(width=width, layers=layers, heads=width // 64, patch_size=patch,
                   image_size=image_size, mlp_ratio=mlp / width, act="quick_gelu", ln_eps=1e-5,
                   patch_bias=False, pre_norm=True)


def convert_official_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key names to ours."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _BLOCK_KEY.match(key):
            rest = m.group(2)
            for old, new in _ADAPTERS.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):].replace(".D_fc1", ".fc1").replace(".D_fc2", ".fc2")
                    break
            out[f"blocks.{m.group(1)}.{rest}"] = value
        elif key.startswith("cls_head.fc_cls."):
            out["head." + key.rsplit(".", 1)[1]] = value
        elif key in ("backbone.conv1.weight", "backbone.class_embedding",
                     "backbone.positional_embedding"):
            out["patch_embed." + key.removeprefix("backbone.")] = value
        elif key.startswith("backbone."):
            out[key.removeprefix("backbone.")] = value
    return out


def load_official_checkpoint(path: str | Path, **overrides: Any) -> VideoClassifier:
    """A ready model in eval mode from a released AIM ``.pth``.

    Width, depth, patch, frames, classes, ratio and the number of temporal adapters come from the
    shapes; heads = width / 64; the adapter scale is 0.5, or 1.0 with a second temporal adapter.
    ``overrides`` replace :class:`ModelConfig` or :class:`AdapterConfig` fields (e.g. ``scale=0.5``).
    """
    state = read_official_state(path)
    cfg = official_model_config(state, **overrides)
    model = VideoClassifier(cfg, official_spec(state, cfg.image_size))
    converted = convert_official_state(state)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(f"{path}: checkpoint does not match the inferred architecture; missing "
                            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.backbone_identity = BackboneIdentity("official-aim", cfg.backbone.name, str(path),
                                               file_sha256(Path(path)), False)
    return model.eval()
