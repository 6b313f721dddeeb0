"""The frozen image ViT's parts, in one parameter layout for every weight source.

open_clip, timm and the released AIM checkpoints name the same tensors differently; converting them
all into this layout (see :mod:`aim_core.backbones`) lets one block implementation, fused attention
and one FLOP count serve every backbone. Names follow CLIP (``conv1``, ``ln_1``, ``mlp.c_fc``) so
the official checkpoints map onto it almost one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTSpec:
    """Geometry and numerics of a plain ViT (CLS token, learned absolute positions)."""

    width: int
    layers: int
    heads: int
    patch_size: int
    image_size: int            # resolution the positional embedding was trained at
    mlp_ratio: float = 4.0
    act: Literal["gelu", "quick_gelu"] = "gelu"
    ln_eps: float = 1e-5
    patch_bias: bool = False   # CLIP's conv1 has no bias, timm's patch_embed.proj has one
    pre_norm: bool = True      # CLIP's ln_pre; most timm ViTs have none

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)


class Attention(nn.Module):
    """Multi-head self-attention over ``(batch, tokens, dim)`` with fused SDPA.

    Parameters are stored as ``nn.MultiheadAttention`` stores them (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so CLIP and AIM checkpoints load without reshaping. AIM calls
    the same module on two axes: over the tokens of a frame (spatial) and over the frames at one
    token position (temporal).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor, parts: int, start: int = 0) -> tuple[torch.Tensor, ...]:
        """``parts`` of q, k, v from ``start``, as ``(batch, heads, tokens, head_dim)`` views."""
        b, n, d = x.shape
        rows = slice(start * d, (start + parts) * d)
        proj = F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])
        # unbind, not indexing (index ops each allocate a full-size zero gradient in backward), on
        # the parts axis in place (backward stacks the gradients straight into proj's layout)
        split = proj.view(b, n, parts, self.heads, d // self.heads).unbind(2)
        return tuple(t.transpose(1, 2) for t in split)

    def _qkv(self, x: torch.Tensor, queries: int | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if queries is None:
            q, k, v = self._heads(x, 3)
            return q, k, v
        (q,), (k, v) = self._heads(x[:, :queries], 1), self._heads(x, 2, start=1)
        return q, k, v

    def forward(self, x: torch.Tensor, queries: int | None = None,
                project: bool = True) -> torch.Tensor:
        """``(batch, tokens, dim)`` to ``(batch, queries or tokens, dim)``.

        ``queries``: only the first ``queries`` tokens ask (all tokens are keys and values), when
        only their outputs are read. ``project=False`` skips ``out_proj``, for a caller that folds
        it into its next linear layer.
        """
        b, n, d = x.shape
        q, k, v = self._qkv(x, queries)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], d)
        return self.out_proj(out) if project else out

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights ``(batch, heads, tokens, tokens)``, for visualisation only."""
        q, k, _ = self._qkv(x, None)
        scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
        return scores.softmax(dim=-1)


QUICK_GELU_SCALE = 1.702


class Mlp(nn.Module):
    """``c_proj(act(c_fc(x)))``, ``act`` being GELU or CLIP's QuickGELU ``x * sigmoid(1.702 x)``.

    QuickGELU runs as ``silu(1.702 h) / 1.702`` with both factors folded into the weights around it
    (``1.702 c_fc``, ``c_proj / 1.702``: weight-sized products, not activation-sized ones), so
    forward and backward take one fused pass over the ``4 D`` hidden activation instead of the
    three multiplications and a sigmoid (five passes in backward) of the literal formula.
    """

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.quick_gelu = act == "quick_gelu"
        self.act = nn.SiLU() if self.quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quick_gelu:
            return self.c_proj(self.act(self.c_fc(x)))
        s = QUICK_GELU_SCALE
        h = self.act(F.linear(x, self.c_fc.weight * s, self.c_fc.bias * s))
        return F.linear(h, self.c_proj.weight * (1 / s), self.c_proj.bias)


class PatchEmbed(nn.Module):
    """Frames ``(N, C, H, W)`` to tokens ``(N, 1 + patches, D)`` with CLS and positions added."""

    def __init__(self, spec: ViTSpec, image_size: int) -> None:
        super().__init__()
        self.patch_size = spec.patch_size
        self.conv1 = nn.Conv2d(3, spec.width, spec.patch_size, spec.patch_size, bias=spec.patch_bias)
        grid = image_size // spec.patch_size
        scale = spec.width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(spec.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, spec.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
