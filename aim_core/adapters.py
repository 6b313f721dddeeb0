"""The bottleneck Adapter (Houlsby et al., 2019) used by every AIM adaptation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Adapter(nn.Module):
    """``fc1 -> GELU -> fc2`` with hidden width ``int(dim * ratio)``.

    ``fc2`` starts at zero so that an adapted model begins exactly as the frozen image model:
    with ``skip=False`` the adapter contributes nothing, with ``skip=True`` it is the identity.
    The temporal and joint adaptations use ``skip=False`` (the residual lives in the block); the
    spatial adaptation and the second temporal adapter use ``skip=True``.
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter ratio {ratio} gives no hidden units for width {dim}")
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return x + out if self.skip else out

    def after(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``self(linear(x))`` for a skip-free adapter, with ``linear`` folded into ``fc1``.

        ``fc1(linear(x)) = x (W1 W)^T + (W1 b + b1)``: when nothing else reads ``linear(x)``, one
        ``D -> hidden`` product of the folded weight (recomputed every call, as ``fc1`` trains)
        replaces ``linear``'s ``D -> D`` one, in forward and in backward alike.
        """
        if self.skip:
            raise ValueError("an adapter with a skip connection needs linear(x) itself")
        # in the weights' precision, outside autocast: the fold is weight-sized, and under bf16
        # autocast this rounds the folded weight once instead of rounding a bf16 product
        with torch.autocast(x.device.type, enabled=False):
            weight = self.fc1.weight @ linear.weight
            bias = F.linear(linear.bias, self.fc1.weight, self.fc1.bias)
        return self.fc2(self.act(F.linear(x, weight, bias)))

    def extra_repr(self) -> str:
        return f"skip={self.skip}"
