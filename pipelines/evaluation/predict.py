"""``aim-video predict``: the top classes of each video, with the model's own test-time views.

A file that cannot be decoded gets a one-line error and the others are still predicted: a batch of
user videos always has a broken one, and it should cost that file, not the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aim_core.config import Config
from aim_core.video import VideoDecodeError

from aim_core.inference import Inference, default_device

from pipelines import console
from pipelines.evaluation.evaluate import predict_video


@dataclass
class VideoPrediction:
    """The ``top`` ``(class name, probability)`` pairs of one video, or why it has none."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def predict_videos(model: torch.nn.Module, cfg: Config, class_names: Sequence[str] | None,
                   paths: Iterable[str | os.PathLike[str]], topk: int = 5,
                   inference: Inference | None = None) -> Iterator[VideoPrediction]:
    """One :class:`VideoPrediction` per path, in order; decode failures become ``error``."""
    num_classes = cfg.model.num_classes
    names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    k = min(topk, num_classes)
    model.eval()
    for path in paths:
        path = os.fspath(path)
        try:
            probs = predict_video(model, cfg, path, inference)
        except VideoDecodeError as exc:
            yield VideoPrediction(path, error=str(exc).removeprefix(f"{path}: "))
            continue
        values, indices = probs.topk(k)
        top = [(names[i], float(v)) for v, i in zip(values, indices.tolist())]
        yield VideoPrediction(path, top)


def format_prediction(pred: VideoPrediction) -> str:
    if pred.error is not None:
        return f"{pred.path}: error: {pred.error}"
    width = max(len(name) for name, _ in pred.top)
    lines = [pred.path] + [f"  {rank}. {name:<{width}}  {prob:.4f}"
                           for rank, (name, prob) in enumerate(pred.top, start=1)]
    return "\n".join(lines)


def run_predict(paths: Sequence[str], model_ref: str, topk: int = 5,
                overrides: Mapping[str, Any] | None = None, labels_file: str | None = None
                ) -> int:
    """The command: prints each video's top classes; returns 1 if any video failed, else 0."""
    from pipelines.tracking.references import resolve_model
    from pipelines.tracking.runs import configure

    configure()  # models:/ and runs:/ resolve against $MLFLOW_TRACKING_URI or ./mlflow.db
    model, cfg, class_names = resolve_model(model_ref, device=default_device())
    cfg = cfg.with_overrides(overrides or {})
    if labels_file:
        with open(labels_file, encoding="utf-8") as fh:
            class_names = [line.strip() for line in fh if line.strip()]
        if len(class_names) != cfg.model.num_classes:
            raise ValueError(f"{labels_file} has {len(class_names)} names, the model "
                             f"{cfg.model.num_classes} classes")
    failures = 0
    for pred in predict_videos(model, cfg, class_names, paths, topk):
        if pred.error is not None:
            failures += 1
            console.error(format_prediction(pred))
        else:
            console.say(format_prediction(pred))
    if failures:
        console.error(f"{failures} of {len(paths)} video(s) could not be read")
    return 1 if failures else 0
