"""Attention maps of the last block, for pictures like the paper's Fig. 4.

The maps come from the model's own forward pass: forward pre-hooks on the last block's attention
modules capture exactly the tensors the block feeds them (``ln_1(x)`` after the temporal branch has
been added, for AIM's spatial attention; the frame-wise ``ln_1``/``ln_t`` input for temporal
attention), and :meth:`aim_core.vit.Attention.attention_probs` turns each into softmax weights.
Nothing in the model is replaced or recomputed by hand, so the maps cannot drift from what the
block actually computes, and nothing here depends on Ray or MLflow.

Which call is which: an :class:`~aim_core.blocks.AIMBlock` with temporal adaptation calls its one
frozen ``attn`` twice, across frames first (T-MSA, eq. 3) and then across tokens (S-MSA); a
:class:`~aim_core.blocks.DividedSpaceTimeBlock` has a separate ``attn_t``. Space-only models have no
temporal attention, and their maps say so (``temporal`` is ``None``).

Temporal saliency, per patch position and frame, is ``1 - A[t, t]``: the share of attention that the
token at that position in frame ``t`` pays to *other* frames (head-averaged). 0 means the token
ignores time there; ``1 - 1/T`` is what a token that cannot tell frames apart gives (uniform
attention). It is a map of where the block mixes information across time, not of motion as such.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
from einops import rearrange
from torch import nn

from .blocks import AIMBlock, DividedSpaceTimeBlock


class AttentionMaps(TypedDict):
    """Last-block maps of one clip (float32, CPU).

    ``spatial``: ``(T, grid, grid)``, each frame's CLS attention over its patches (sums to 1).
    ``temporal``: ``(T, T)``, row ``t``: frame ``t``'s CLS attention over frames (rows sum to 1);
    ``None`` for models without temporal attention.
    ``temporal_saliency``: ``(T, grid, grid)``, ``1 - A[t, t]`` at each patch (module docstring);
    ``None`` likewise.
    ``logits``: ``(num_classes,)`` of the same forward pass.
    """

    spatial: torch.Tensor
    temporal: torch.Tensor | None
    temporal_saliency: torch.Tensor | None
    logits: torch.Tensor


def _attention_roles(block: nn.Module) -> list[tuple[nn.Module, str]]:
    """The attention modules of ``block`` in call order, each with its role."""
    if isinstance(block, DividedSpaceTimeBlock):
        return [(block.attn_t, "temporal"), (block.attn, "spatial")]
    if isinstance(block, AIMBlock):
        roles = ["temporal", "spatial"] if block.t_adapter is not None else ["spatial"]
        return [(block.attn, role) for role in roles]
    raise TypeError(f"cannot read attention from a {type(block).__name__} block")


class _Capture:
    """Pre-hook state: head-averaged attention weights of each call, by expected call order."""

    def __init__(self, roles: list[str], num_frames: int) -> None:
        self.roles = roles
        self.num_frames = num_frames
        self.probs: dict[str, torch.Tensor] = {}

    def hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        pending = [r for r in self.roles if r not in self.probs]
        if not pending:
            raise RuntimeError("the last block called its attention more often than expected")
        x, role = args[0], pending[0]
        frame_axis = 1 if role == "temporal" else 0  # (tokens, T, D) or (T, tokens, D)
        if x.shape[frame_axis] != self.num_frames:
            raise RuntimeError(f"expected the {role} attention call, got input {tuple(x.shape)}")
        self.probs[role] = module.attention_probs(x).float().mean(dim=1)


def _spatial_map(probs: torch.Tensor) -> torch.Tensor:
    """``(T, 1+N, 1+N)`` head-averaged weights -> CLS-to-patch ``(T, grid, grid)``, renormalised."""
    cls_to_patches = probs[:, 0, 1:]
    grid = math.isqrt(cls_to_patches.shape[-1])
    if grid * grid != cls_to_patches.shape[-1]:
        raise ValueError(f"{cls_to_patches.shape[-1]} patches do not form a square grid")
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
    return cls_to_patches.reshape(-1, grid, grid)


def _temporal_maps(probs: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1+N, T, T)`` per-token weights -> CLS ``(T, T)`` and saliency ``(T, grid, grid)``."""
    self_weight = probs[1:].diagonal(dim1=-2, dim2=-1)            # (N, T)
    saliency = rearrange(1.0 - self_weight, "(h w) t -> t h w", h=grid, w=grid)
    return probs[0], saliency


@torch.no_grad()
def cls_attention_maps(model: nn.Module, clip: torch.Tensor) -> AttentionMaps:
    """Run ``model`` on one normalised clip ``(1, C, T, H, W)`` and read its last block's attention.

    The model runs in eval mode (drop path off, as at test time) and is returned to the mode it
    was in. See the module docstring for what each map means.
    """
    if clip.ndim != 5 or clip.shape[0] != 1:
        raise ValueError(f"expected one clip of shape (1, C, T, H, W), got {tuple(clip.shape)}")
    block = model.blocks[-1]
    pairs = _attention_roles(block)
    capture = _Capture([role for _, role in pairs], clip.shape[2])
    modules = {id(m): m for m, _ in pairs}.values()  # AIM's two calls share one module
    handles = [m.register_forward_pre_hook(capture.hook) for m in modules]
    was_training = model.training
    model.eval()
    try:
        logits = model(clip.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    spatial = _spatial_map(capture.probs["spatial"]).cpu()
    temporal = saliency = None
    if "temporal" in capture.probs:
        temporal, saliency = (m.cpu() for m in _temporal_maps(capture.probs["temporal"],
                                                              spatial.shape[-1]))
    return AttentionMaps(spatial=spatial, temporal=temporal, temporal_saliency=saliency,
                         logits=logits[0].float().cpu())
