"""The official AIM implementation's math as a benchmark variant, carrying our model's weights.

The math is :class:`tests.official_reference.OfficialAIM` (sequence-first ``nn.MultiheadAttention``,
as in the released code), imported rather than copied so the benchmark and the logit test compare
against the same thing. The twin gets our model's weights (so the two losses agree at
initialisation) and the released training script's tunable set: parameters whose names contain
``temporal_embedding``, ``ln_post``, ``cls_head`` or ``Adapter``.
"""

from __future__ import annotations

import torch

from aim_core.model import VideoClassifier
from aim_core.official import convert_official_state
from tests.official_reference import OfficialAIM

OFFICIAL_TUNABLE = ("temporal_embedding", "ln_post", "cls_head", "Adapter")


def official_twin(model: VideoClassifier) -> OfficialAIM:
    """An :class:`OfficialAIM` with ``model``'s geometry, weights, tunable set, device and mode."""
    cfg, spec = model.cfg, model.spec
    supported = (cfg.variant == "aim" and sorted(cfg.adapter.adaptations) == ["joint", "spatial",
                 "temporal"] and cfg.adapter.placement == "all" and spec.act == "quick_gelu"
                 and spec.heads == spec.width // 64 and spec.mlp_ratio == 4.0 and spec.pre_norm
                 and not spec.patch_bias and spec.ln_eps == 1e-5)
    if not supported:
        raise ValueError("the official math covers full AIM (all adaptations, every block) on a "
                         "CLIP ViT with QuickGELU and 64-wide heads; got "
                         f"{cfg.variant} {cfg.adapter.adaptations} placement="
                         f"{cfg.adapter.placement!r}, {spec}")
    twin = OfficialAIM(size=cfg.image_size, frames=cfg.num_frames, patch=spec.patch_size,
                       d=spec.width, layers=spec.layers, classes=cfg.num_classes,
                       ratio=cfg.adapter.ratio, scale=cfg.adapter.scale,
                       num_tadapter=cfg.adapter.temporal_adapters)
    ours = model.state_dict()
    twin.load_state_dict({theirs: ours[name] for name, theirs in official_names(twin).items()})
    for name, param in twin.named_parameters():
        param.requires_grad_(any(key in name for key in OFFICIAL_TUNABLE))
    device = next(model.parameters()).device
    return twin.to(device).train(model.training)


def official_names(twin: OfficialAIM) -> dict[str, str]:
    """Our parameter name -> the official one, from the one official-to-ours key converter."""
    # the converter only renames keys, so feeding it the official names as values inverts it
    return dict(convert_official_state({k: k for k in twin.state_dict()}))  # type: ignore[arg-type]


def official_forward(twin: OfficialAIM, clips: torch.Tensor) -> torch.Tensor:
    """Logits of the twin; the reference builds its CLS tokens with ``torch.zeros`` on the default
    device, so the forward runs with the clips' device as the default."""
    with torch.device(clips.device):
        return twin(clips)
