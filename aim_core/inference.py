"""One way to run a trained model on clips: the device, the precision and the batching.

Training's evaluation, ``aim-video eval``, ``predict`` and ``explain``, the registry's pyfunc and
the serving replica all score clips through :class:`Inference`, so one config gives the same
probabilities everywhere. ``optim.precision`` decides for training and inference alike
(:func:`autocast_dtype`); ``optim.eval_batch_size`` is the inference batch, independent of the
training batch.

Clips come in either of the two forms the project uses: ``uint8 (V, T, H, W, 3)`` views as the data
path makes them (normalised here, on the device, batched), or float ``(V, 3, T, H, W)`` clips already
CLIP-normalised (the pyfunc's signature, the model's own input).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .config import Config
from .transforms import to_model_input


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``optim.precision`` on ``device``; None means fp32.

    ``auto``: bf16 on GPUs that have it, fp16 on older GPUs (training adds a loss scaler), fp32 on
    the CPU. An explicit ``bf16`` holds on the CPU too; ``fp16`` needs a GPU.
    """
    on_gpu = device.type == "cuda"
    if setting == "auto":
        setting = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if on_gpu else "fp32"
    if setting == "fp16" and not on_gpu:
        raise ValueError("optim.precision: fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Inference:
    """Device, autocast dtype and batch size for scoring clips with a model in eval mode."""

    device: torch.device
    dtype: torch.dtype | None
    batch_size: int

    @classmethod
    def for_config(cls, cfg: Config, device: torch.device | str | None = None) -> Inference:
        device = torch.device(device) if device is not None else default_device()
        return cls(device, autocast_dtype(cfg.optim.precision, device), cfg.optim.eval_batch_size)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context, for callers that run the model themselves (attention maps)."""
        return autocast(self.device, self.dtype)

    @torch.no_grad()
    def probabilities(self, model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(V, num_classes)``, float32 on the CPU, ``batch_size`` at a time.

        ``clips``: ``uint8 (V, T, H, W, 3)`` views or float ``(V, 3, T, H, W)`` normalised clips.
        """
        model.eval()
        out = []
        for part in clips.split(self.batch_size):
            part = part.to(self.device, non_blocking=True)
            if part.dtype == torch.uint8:
                part = to_model_input(part)
            with self.autocast():
                out.append(model(part).float().softmax(dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0)
