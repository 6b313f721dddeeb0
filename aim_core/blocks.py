"""Transformer blocks of the video models: the AIM block and the divided space-time baseline.

Tokens flow as ``(B*T, 1+N, D)``: every frame is an image to the frozen ViT, and the temporal
operations regroup the same tensor as ``(B*(1+N), T, D)``, one sequence of frames per token position.

Shortcuts (on unless :meth:`~aim_core.model.VideoClassifier.set_shortcuts` turns them off) compute
the same function with less work: the last block computes only the CLS token, the one output the
classifier reads (``cls_only``), and AIM's temporal adapter absorbs T-MSA's output projection,
which feeds nothing else. Off, every equation runs as the paper writes it, which is what the FLOP
accounting counts (the paper's tables count that way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import DropPath
from torch import nn

from .adapters import Adapter
from .vit import Attention, Mlp, ViTSpec


@dataclass(frozen=True)
class BlockAdapters:
    """Which adaptations one block carries (all off = the frozen image block)."""

    spatial: bool = False
    temporal: bool = False
    joint: bool = False
    temporal_in: bool = False   # second temporal adapter before T-MSA (SSv2 recipe)
    ratio: float = 0.25
    scale: float = 0.5

    @property
    def any(self) -> bool:
        return self.spatial or self.temporal or self.joint


def _over_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B*T, N, D)`` tokens to ``(B*N, T, D)``: one sequence of frames per token position."""
    return rearrange(x, "(b t) n d -> (b n) t d", t=num_frames)


def _over_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The inverse of :func:`_over_frames`."""
    return rearrange(x, "(b n) t d -> (b t) n d", n=num_tokens)


class AIMBlock(nn.Module):
    """A frozen ViT block with AIM's adaptations, equations (3)-(5) of the paper.

    - temporal: ``z = z + DropPath(Adapter_noskip(T-MSA(LN1(z))))``, T-MSA being the block's own
      frozen attention applied across frames at each token position (CLS included);
    - spatial: ``z = z + Adapter_skip(S-MSA(LN1(z)))``;
    - joint: ``z = z + MLP(LN2(z)) + DropPath(s * Adapter_noskip(LN2(z)))``.

    With every adaptation off this is exactly the image block, which is how the space-only
    baselines are built. ``full_finetune`` applies drop path to the attention and MLP branches too,
    as when every weight trains. ``cls_only``: return only each frame's CLS token (see the module
    docstring on shortcuts).
    """

    def __init__(self, spec: ViTSpec, adapters: BlockAdapters, drop_path: float = 0.0,
                 full_finetune: bool = False) -> None:
        super().__init__()
        d = spec.width
        self.ln_1 = nn.LayerNorm(d, eps=spec.ln_eps)
        self.attn = Attention(d, spec.heads)
        self.ln_2 = nn.LayerNorm(d, eps=spec.ln_eps)
        self.mlp = Mlp(d, spec.mlp_width, spec.act)
        self.scale = adapters.scale
        self.t_adapter_in = Adapter(d, adapters.ratio, skip=True) if (
            adapters.temporal and adapters.temporal_in) else None
        self.t_adapter = Adapter(d, adapters.ratio, skip=False) if adapters.temporal else None
        self.s_adapter = Adapter(d, adapters.ratio, skip=True) if adapters.spatial else None
        self.mlp_adapter = Adapter(d, adapters.ratio, skip=False) if adapters.joint else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.frozen_drop_path = self.drop_path if full_finetune else nn.Identity()
        self.shortcuts = True

    def forward(self, x: torch.Tensor, num_frames: int, cls_only: bool = False) -> torch.Tensor:
        if self.t_adapter is not None:
            x = x + self.drop_path(_over_tokens(self._temporal(x, num_frames), x.shape[1]))
        xs = self.attn(self.ln_1(x), queries=1 if cls_only else None)
        if self.s_adapter is not None:
            xs = self.s_adapter(xs)
        x = x[:, :xs.shape[1]] + self.frozen_drop_path(xs)
        xn = self.ln_2(x)
        out = x + self.frozen_drop_path(self.mlp(xn))
        if self.mlp_adapter is not None:
            out = out + self.drop_path(self.scale * self.mlp_adapter(xn))
        return out

    def _temporal(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``Adapter_noskip(T-MSA(LN1(z)))`` over frames, eq. (3) without its residual."""
        xt = self.ln_1(_over_frames(x, num_frames))
        if self.t_adapter_in is not None:
            xt = self.t_adapter_in(xt)
        if not self.shortcuts:
            return self.t_adapter(self.attn(xt))
        return self.t_adapter.after(self.attn.out_proj, self.attn(xt, project=False))


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer-style divided attention: a new temporal attention, then the spatial one.

    The temporal attention (with its own norm) starts as a copy of the spatial one and feeds a
    zero-initialised ``temporal_fc``, so at initialisation the block equals the image block, as in
    TimeSformer. Every weight trains; this is the full-fine-tuning oracle of Table 1 and Fig. 3.
    """

    def __init__(self, spec: ViTSpec, drop_path: float = 0.0) -> None:
        super().__init__()
        d = spec.width
        self.ln_t = nn.LayerNorm(d, eps=spec.ln_eps)
        self.attn_t = Attention(d, spec.heads)
        self.temporal_fc = nn.Linear(d, d)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)
        self.ln_1 = nn.LayerNorm(d, eps=spec.ln_eps)
        self.attn = Attention(d, spec.heads)
        self.ln_2 = nn.LayerNorm(d, eps=spec.ln_eps)
        self.mlp = Mlp(d, spec.mlp_width, spec.act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shortcuts = True

    def init_temporal_from_spatial(self) -> None:
        """Copy the (pre-trained) spatial attention and norm into the temporal ones."""
        self.attn_t.load_state_dict(self.attn.state_dict())
        self.ln_t.load_state_dict(self.ln_1.state_dict())

    def forward(self, x: torch.Tensor, num_frames: int, cls_only: bool = False) -> torch.Tensor:
        xt = self.temporal_fc(self.attn_t(self.ln_t(_over_frames(x, num_frames))))
        x = x + self.drop_path(_over_tokens(xt, x.shape[1]))
        xs = self.attn(self.ln_1(x), queries=1 if cls_only else None)
        x = x[:, :xs.shape[1]] + self.drop_path(xs)
        return x + self.drop_path(self.mlp(self.ln_2(x)))
