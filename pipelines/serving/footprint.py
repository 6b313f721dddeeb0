"""What sharing a backbone saves: measured on the tensors a replica holds, and counted on the meta
device for models too large to build here (CLIP ViT-B/16: 86M frozen + 11M per model).

Weight memory is the bytes of the distinct storages behind the models' parameters and buffers,
the quantity sharing changes; a process's resident size also counts the allocator's slack and the
libraries, which sharing does not touch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from aim_core.config import ModelConfig


def _storages(model: nn.Module) -> dict[int, int]:
    """``data_ptr -> nbytes`` of the storages behind ``model``'s parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


@dataclass(frozen=True)
class WeightFootprint:
    """The weights of ``models`` models as held (``weight_bytes``) against one copy each."""

    models: int
    weight_bytes: int
    separate_bytes: int

    @property
    def saved_fraction(self) -> float:
        return 1 - self.weight_bytes / self.separate_bytes if self.separate_bytes else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "saved_fraction": round(self.saved_fraction, 4)}


def weight_footprint(models: Iterable[nn.Module]) -> WeightFootprint:
    held: dict[int, int] = {}
    separate, count = 0, 0
    for model in models:
        storages = _storages(model)
        separate += sum(storages.values())
        held.update(storages)
        count += 1
    return WeightFootprint(count, sum(held.values()), separate)


def shared_with(models: Mapping[str, nn.Module]) -> dict[str, list[str]]:
    """For each model, the other models that hold some of the very same weight tensors."""
    pointers = {name: set(_storages(model)) for name, model in models.items()}
    return {name: sorted(other for other, theirs in pointers.items()
                         if other != name and mine & theirs)
            for name, mine in pointers.items()}


@dataclass(frozen=True)
class SharingEstimate:
    """Parameter counts of one model, split into what K models can share and what each adds."""

    frozen: int
    tunable: int

    def shared(self, k: int) -> int:
        return self.frozen + k * self.tunable

    def separate(self, k: int) -> int:
        return k * (self.frozen + self.tunable)


def sharing_estimate(cfg: ModelConfig) -> SharingEstimate:
    """Count on the meta device (no weights, no memory): frozen vs tunable tensors' elements."""
    from aim_core.backbones import build_model

    model = build_model(cfg, device="meta")
    frozen = tunable = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if model.is_tunable(name):
            tunable += tensor.numel()
        else:
            frozen += tensor.numel()
    return SharingEstimate(frozen, tunable)


def estimate_table(estimate: SharingEstimate, counts: Sequence[int] = (1, 2, 4, 8),
                   bytes_per_weight: int = torch.float32.itemsize) -> str:
    """A Markdown table: K models sharing one backbone against K separate models."""
    gib = 2**30
    rows = ["| models | shared backbone | separate models | shared / separate |",
            "|---|---|---|---|"]
    for k in counts:
        shared, separate = estimate.shared(k), estimate.separate(k)
        rows.append(f"| {k} | {shared / 1e6:.1f}M ({shared * bytes_per_weight / gib:.2f} GiB) | "
                    f"{separate / 1e6:.1f}M ({separate * bytes_per_weight / gib:.2f} GiB) | "
                    f"{shared / separate:.2f}x |")
    return "\n".join(rows)
