"""An independent re-implementation of the official AIM ``ViT_ImageNet`` forward pass
(``mmaction/models/backbones/vit_imagenet.py``: the ImageNet-21K backbone), for tests only.

It keeps the released code's names and conventions on purpose (timm-style ``qkv`` / ``proj``
attention with an explicit softmax, ``norm1`` / ``norm2``, LayerNorm eps 1e-6, exact GELU, a
biased patch projection, no norm before the blocks, CLS token in the temporal attention,
``ln_post`` on every token then CLS, I3D head averaging over time), so that our loader can be
checked against it to 1e-4 on a checkpoint saved as mmaction saves one. The adapters and the I3D
head are the same code in both official backbones, so they come from :mod:`official_reference`.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from torch import nn

from .official_reference import Adapter, Head

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=True)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d, frames, heads, scale, num_tadapter):
        super().__init__()
        self.num_frames, self.num_tadapter, self.scale = frames, num_tadapter, scale
        self.norm1 = LayerNorm(d)
        self.attn = Attention(d, heads)
        self.MLP_Adapter = Adapter(d, 0.25, skip=False)
        self.S_Adapter = Adapter(d, 0.25, skip=True)
        self.T_Adapter = Adapter(d, 0.25, skip=False)
        if num_tadapter == 2:
            self.T_Adapter_in = Adapter(d, 0.25, skip=True)
        self.norm2 = LayerNorm(d)
        self.mlp = Mlp(d, 4 * d)

    def forward(self, x):  # (b*t, n, d), batch first
        n = x.shape[1]
        xt = rearrange(x, "(b t) n d -> (b n) t d", t=self.num_frames)
        if self.num_tadapter == 2:
            xt = self.T_Adapter(self.attn(self.T_Adapter_in(self.norm1(xt))))
        else:
            xt = self.T_Adapter(self.attn(self.norm1(xt)))
        x = x + rearrange(xt, "(b n) t d -> (b t) n d", n=n)
        x = x + self.S_Adapter(self.attn(self.norm1(x)))
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class PatchEmbed(nn.Module):
    def __init__(self, patch, d):
        super().__init__()
        self.proj = nn.Conv2d(3, d, patch, patch, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Backbone(nn.Module):
    def __init__(self, size, frames, patch, d, depth, heads, scale, num_tadapter):
        super().__init__()
        self.num_frames = frames
        self.patch_embed = PatchEmbed(patch, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, d) * 0.02)
        self.temporal_embedding = nn.Parameter(torch.randn(1, frames, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, frames, heads, scale, num_tadapter)
                                    for _ in range(depth))
        self.ln_post = LayerNorm(d)

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))
        x = torch.cat([self.cls_token + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = x + self.pos_embed
        n = x.shape[1]
        x = rearrange(x, "(b t) n d -> (b n) t d", t=self.num_frames) + self.temporal_embedding
        x = rearrange(x, "(b n) t d -> (b t) n d", n=n)
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x)[:, 0]
        return rearrange(x, "(b t) d -> b d t", b=b, t=t)


class OfficialImageNetAIM(nn.Module):
    def __init__(self, size=32, frames=4, patch=8, d=128, depth=2, classes=5, scale=0.5,
                 num_tadapter=1):
        super().__init__()
        self.backbone = Backbone(size, frames, patch, d, depth, d // 64, scale, num_tadapter)
        self.cls_head = Head(d, classes)

    def forward(self, x):
        return self.cls_head(self.backbone(x))
