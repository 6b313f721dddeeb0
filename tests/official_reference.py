"""An independent re-implementation of the official AIM ``ViT_CLIP`` forward pass, for tests only.

It follows the released code's conventions on purpose (sequence-first ``nn.MultiheadAttention``,
QuickGELU, CLS token included in the temporal attention, ``ln_post`` on every token then CLS,
I3D head averaging over time), so that our loader can be checked against it to 1e-4.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from einops import rearrange
from torch import nn


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Adapter(nn.Module):
    def __init__(self, d, ratio, skip):
        super().__init__()
        self.skip_connect = skip
        self.act = nn.GELU()
        self.D_fc1 = nn.Linear(d, int(d * ratio))
        self.D_fc2 = nn.Linear(int(d * ratio), d)

    def forward(self, x):
        xs = self.D_fc2(self.act(self.D_fc1(x)))
        return x + xs if self.skip_connect else xs


class Block(nn.Module):
    def __init__(self, d, heads, frames, ratio, scale, num_tadapter):
        super().__init__()
        self.num_frames = frames
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(4 * d, d))]))
        self.ln_2 = nn.LayerNorm(d)
        self.MLP_Adapter = Adapter(d, ratio, False)
        self.S_Adapter = Adapter(d, ratio, True)
        self.T_Adapter = Adapter(d, ratio, False)
        if num_tadapter == 2:
            self.T_Adapter_in = Adapter(d, ratio, True)
        self.num_tadapter = num_tadapter
        self.scale = scale

    def attention(self, x):
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x):  # (n, b*t, d), sequence first
        n, bt, d = x.shape
        xt = rearrange(x, "n (b t) d -> t (b n) d", t=self.num_frames)
        if self.num_tadapter == 2:
            xt = self.T_Adapter(self.attention(self.T_Adapter_in(self.ln_1(xt))))
        else:
            xt = self.T_Adapter(self.attention(self.ln_1(xt)))
        xt = rearrange(xt, "t (b n) d -> n (b t) d", n=n)
        x = x + xt
        x = x + self.S_Adapter(self.attention(self.ln_1(x)))
        xn = self.ln_2(x)
        return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)


class Transformer(nn.Module):
    def __init__(self, d, layers, heads, frames, ratio, scale, num_tadapter):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(d, heads, frames, ratio, scale, num_tadapter)
                                         for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class Backbone(nn.Module):
    def __init__(self, size, frames, patch, d, layers, heads, ratio, scale, num_tadapter):
        super().__init__()
        self.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((size // patch) ** 2 + 1, d) * d ** -0.5)
        self.ln_pre = nn.LayerNorm(d)
        self.temporal_embedding = nn.Parameter(torch.randn(1, frames, d) * 0.02)
        self.transformer = Transformer(d, layers, heads, frames, ratio, scale, num_tadapter)
        self.ln_post = nn.LayerNorm(d)
        self.num_frames = frames

    def forward(self, x):
        b, c, t, h, w = x.shape
        x = rearrange(x, "b c t h w -> (b t) c h w")
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        n = x.shape[1]
        x = rearrange(x, "(b t) n d -> (b n) t d", t=self.num_frames) + self.temporal_embedding
        x = rearrange(x, "(b n) t d -> (b t) n d", n=n)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        x = self.ln_post(x)[:, 0]
        return rearrange(x, "(b t) d -> b d t", b=b, t=t)


class Head(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.fc_cls = nn.Linear(d, classes)

    def forward(self, x):  # (b, d, t)
        return self.fc_cls(x.mean(dim=-1))


class OfficialAIM(nn.Module):
    def __init__(self, size=32, frames=4, patch=8, d=128, layers=2, classes=5, ratio=0.25,
                 scale=0.5, num_tadapter=1):
        super().__init__()
        self.backbone = Backbone(size, frames, patch, d, layers, d // 64, ratio, scale, num_tadapter)
        self.cls_head = Head(d, classes)

    def forward(self, x):
        return self.cls_head(self.backbone(x))
