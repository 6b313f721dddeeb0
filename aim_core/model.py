"""The video classifier over a frozen image ViT, in the variants of the paper's Table 1."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .blocks import AIMBlock, BlockAdapters, DividedSpaceTimeBlock
from .config import ModelConfig, parse_placement
from .vit import PatchEmbed, ViTSpec

if TYPE_CHECKING:
    from .backbones import BackboneIdentity

log = logging.getLogger(__name__)

# Parameter-name fragments that train in the AIM recipe (adapters, temporal embedding, final norm,
# head); everything else is the frozen image model.
_AIM_TUNABLE = ("adapter", "temporal_embedding", "ln_post", "head.")


@dataclass(frozen=True)
class Variant:
    """What a row of the paper's Table 1 builds and trains, resolved once from the config (the one
    place that reads ``model.variant``)."""

    divided_space_time: bool         # TimeSformer's blocks instead of AIM's
    adapters: BlockAdapters          # what each adapted block carries
    adapted_blocks: frozenset[int]
    trains: str                      # "all" | "head" | "adapters" (adapters, embedding, norm, head)
    train_temporal_embedding: bool = True

    @classmethod
    def of(cls, cfg: ModelConfig, layers: int) -> "Variant":
        if cfg.variant == "timesformer":
            return cls(True, BlockAdapters(), frozenset(), "all")
        if cfg.variant != "aim":
            trains = "all" if cfg.variant == "finetuned_space_only" else "head"
            return cls(False, BlockAdapters(), frozenset(), trains)
        on, a = set(cfg.adapter.adaptations), cfg.adapter
        adapters = BlockAdapters(spatial="spatial" in on, temporal="temporal" in on,
                                 joint="joint" in on, temporal_in=a.temporal_adapters == 2,
                                 ratio=a.ratio, scale=a.scale)
        blocks = frozenset(parse_placement(a.placement, layers)) if on else frozenset()
        return cls(False, adapters, blocks, "adapters", cfg.train_temporal_embedding)

    @property
    def models_time(self) -> bool:
        """Whether frames carry a temporal embedding: the variant attends across time."""
        return self.divided_space_time or self.adapters.temporal

    def is_tunable(self, name: str) -> bool:
        if self.trains != "adapters":
            return self.trains == "all" or name.startswith("head.")
        if name == "temporal_embedding":
            return self.train_temporal_embedding
        return any(key in name for key in _AIM_TUNABLE)


class VideoClassifier(nn.Module):
    """``(B, C, T, H, W)`` clips to ``(B, classes)`` logits.

    Frames are embedded independently (patches + positions), a temporal embedding marks each frame's
    place in time when the variant models time, the blocks run, and each frame's CLS token goes
    through the final norm; the per-frame features are averaged over time and classified.
    """

    def __init__(self, cfg: ModelConfig, spec: ViTSpec, backbone_identity: BackboneIdentity
                 ) -> None:
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.variant = Variant.of(cfg, spec.layers)
        # Which frozen weights this model sits on: what a checkpoint records, serving shares by
        # and a relocated backbone file is checked against. Set here only.
        self.backbone_identity = backbone_identity
        self.num_frames = cfg.num_frames
        self.grad_checkpointing = cfg.grad_checkpointing
        d = spec.width

        self.patch_embed = PatchEmbed(spec, cfg.image_size)
        self.temporal_embedding = (nn.Parameter(torch.zeros(1, cfg.num_frames, d))
                                   if self.variant.models_time else None)
        self.ln_pre = nn.LayerNorm(d, eps=spec.ln_eps) if spec.pre_norm else nn.Identity()
        rates = [cfg.drop_path * i / max(spec.layers - 1, 1) for i in range(spec.layers)]
        self.blocks = nn.ModuleList(self._make_block(i, rate) for i, rate in enumerate(rates))
        self.ln_post = nn.LayerNorm(d, eps=spec.ln_eps)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(d, cfg.num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.set_trainable()
        self.set_shortcuts(True)

    def _make_block(self, index: int, drop_path: float) -> nn.Module:
        variant = self.variant
        if variant.divided_space_time:
            return DividedSpaceTimeBlock(self.spec, drop_path)
        adapters = variant.adapters if index in variant.adapted_blocks else BlockAdapters()
        full = variant.trains == "all"
        return AIMBlock(self.spec, adapters, drop_path if (adapters.any or full) else 0.0,
                        full_finetune=full)

    # ------------------------------------------------------------------ what trains
    def is_tunable(self, name: str) -> bool:
        return self.variant.is_tunable(name)

    def set_trainable(self) -> None:
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_tunable(name))

    def tunable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the weights that train: what a checkpoint needs besides the backbone's identity."""
        return {k: v for k, v in self.state_dict().items() if self.is_tunable(k)}

    def tunable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)

    def no_weight_decay(self) -> set[str]:
        """Embeddings, norms and biases are excluded from weight decay, as in the recipe."""
        return {name for name, p in self.named_parameters()
                if p.ndim <= 1 or "embedding" in name}

    def set_grad_checkpointing(self, enable: bool | int = True) -> None:
        """``True``: recompute every block with gradients in backward; an int: that many blocks."""
        self.grad_checkpointing = enable

    def _checkpointed(self, index: int, first_with_grad: int) -> bool:
        setting = self.grad_checkpointing
        count = len(self.blocks) if setting is True else int(setting or 0)
        return first_with_grad <= index < first_with_grad + count

    # ------------------------------------------------------------------ forward
    def _first_block_needing_grad(self) -> int:
        """Blocks below this index carry no gradient and can run without autograd."""
        if any(p.requires_grad for p in self.patch_embed.parameters()) or (
                self.temporal_embedding is not None and self.temporal_embedding.requires_grad) or (
                any(p.requires_grad for p in self.ln_pre.parameters())):
            return 0
        for i, block in enumerate(self.blocks):
            if any(p.requires_grad for p in block.parameters()):
                return i
        return len(self.blocks)

    def set_shortcuts(self, enabled: bool = True) -> None:
        """Shortcuts (on by default) give the same outputs with less work: the last block computes
        only the CLS token, and the temporal adapter absorbs T-MSA's output projection (see
        :mod:`aim_core.blocks`). Off, every equation runs as written, which is how the paper counts
        FLOPs (:mod:`aim_core.accounting` turns them off to count)."""
        self.shortcuts = enabled
        for block in self.blocks:
            block.shortcuts = enabled

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` to per-frame CLS features after the final norm, ``(B, T, D)``."""
        b, _, t, _, _ = x.shape
        if t != self.num_frames and self.temporal_embedding is not None:
            raise ValueError(f"model was built for {self.num_frames} frames, got {t}")
        grad = torch.is_grad_enabled()
        frozen_until = self._first_block_needing_grad() if grad else 0
        with torch.set_grad_enabled(grad and frozen_until == 0):
            x = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))
            if self.temporal_embedding is not None:  # added in place of the frames, no re-layout
                x = (x.unflatten(0, (b, t)) + self.temporal_embedding.to(x.dtype)[:, :, None]
                     ).flatten(0, 1)
            x = self.ln_pre(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            cls_only = self.shortcuts and i == last
            with torch.set_grad_enabled(grad and i >= frozen_until):
                if grad and self.training and self._checkpointed(i, frozen_until):
                    x = torch.utils.checkpoint.checkpoint(block, x, t, cls_only,
                                                          use_reentrant=False)
                else:
                    x = block(x, t, cls_only)
        cls = self.ln_post(x[:, 0])
        return rearrange(cls, "(b t) d -> b t d", b=b)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = features.mean(dim=1)
        return pooled if pre_logits else self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def compile_model(model: VideoClassifier) -> VideoClassifier:
    """Compile ``model``'s blocks in place with ``torch.compile``, for training and inference.

    Block by block (regional compilation): blocks of one structure share one compiled graph, so
    ViT-B/16 compiles one block's code instead of twelve, and the Python around the blocks (which
    blocks need autograd, activation checkpointing) stays as it is. Parameter names, the state
    dict and DDP wrapping are unchanged. The first call of each mode (train/eval, grad/no grad,
    dtype) pays the compilation, which on the CPU needs a C++ compiler.
    """
    for block in model.blocks:
        block.compile(dynamic=False)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, tunable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    tunable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, tunable
