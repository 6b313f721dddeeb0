"""Multi-view evaluation: temporal clips x spatial crops per video, probabilities averaged.

The views follow the config: ``data.test_clips`` temporal clips
(:func:`aim_core.video.clip_indices`) times ``data.test_crops`` spatial crops
(:func:`aim_core.transforms.build_test_transform`), the paper's 3x1 for Kinetics and 1x3 for
SSv2. Two ways in:

- a list of records or paths, decoded here with PyAV in one process (``aim-video predict``, small
  validation sets, notebooks);
- a Ray Dataset of test views from :mod:`pipelines.data.ingest` (rows ``video_id, label, view,
  frames``: one temporal clip each), for large sets where decoding must be spread over a cluster.

A video that cannot be decoded is skipped and listed under ``failed`` in the result; it does not
count as a wrong prediction, and it does not stop the evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Union

import numpy as np
import torch

from aim_core.annotations import VideoRecord
from aim_core.config import Config
from aim_core.inference import Inference
from aim_core.metrics import ClassificationMeter
from aim_core.transforms import build_test_transform
from aim_core.video import (VideoDecodeError, clip_indices, decode_frames, eval_protocol,
                            open_video_source, probe_video)

log = logging.getLogger(__name__)

Labelled = Union[VideoRecord, tuple[str, int]]
EVAL_FILE = "eval.json"
CONFUSION_FILE = "confusion.png"


# ----------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------

def load_views(path: str | os.PathLike[str] | IO[bytes], cfg: Config,
               transform: Callable[[np.ndarray], torch.Tensor] | None = None) -> torch.Tensor:
    """All test views of one video: float ``(clips * crops, 3, T, H, W)``, CLIP-normalised.

    ``path`` is a path, a URI, or an open binary file (an upload in a ``BytesIO``). Raises
    :class:`VideoDecodeError` when it cannot be read as video.
    """
    transform = transform or build_test_transform(cfg.data, cfg.model.image_size)
    t = cfg.model.num_frames
    opened = (contextlib.nullcontext(path) if hasattr(path, "read")
              else open_video_source(os.fspath(path)))
    with opened as source:
        n = probe_video(source).num_frames
        clips = clip_indices(cfg.data, n, t, train=False)
        frames = decode_frames(source, [i for clip in clips for i in clip],
                               short_side=cfg.data.short_side, threads=cfg.data.decode_threads)
    views = [transform(frames[k * t:(k + 1) * t]) for k in range(len(clips))]
    return torch.cat(views)  # (clips, crops, ...) -> (clips * crops, ...)


def inference_for(model: torch.nn.Module, cfg: Config, inference: Inference | None) -> Inference:
    """``inference``, or the config's on the device the model is on."""
    return inference or Inference.for_config(cfg, next(model.parameters()).device)


def predict_video(model: torch.nn.Module, cfg: Config, path: str | os.PathLike[str],
                  inference: Inference | None = None) -> torch.Tensor:
    """Class probabilities ``(num_classes,)`` of one video: the mean over its test views."""
    inference = inference_for(model, cfg, inference)
    return inference.probabilities(model, load_views(path, cfg)).mean(dim=0)


# ----------------------------------------------------------------------------------------------
# Many videos
# ----------------------------------------------------------------------------------------------

def _path_label(item: Labelled) -> tuple[str, int]:
    if isinstance(item, VideoRecord):
        return item.path, item.label
    path, label = item
    return os.fspath(path), int(label)


def _result(meter: ClassificationMeter, class_names: Sequence[str], cfg: Config,
            failed: list[tuple[str, str]]) -> dict[str, Any]:
    if meter.count == 0:
        raise ValueError(f"no video could be evaluated ({len(failed)} failed: {failed[:3]})")
    return {**meter.compute(), "class_names": list(class_names), "num_videos": meter.count,
            "views": {"clips": cfg.data.test_clips, "crops": cfg.data.test_crops},
            "protocol": str(eval_protocol(cfg)),
            "failed": [list(f) for f in failed]}


def evaluate_records(model: torch.nn.Module, cfg: Config, records: Iterable[Labelled],
                     class_names: Sequence[str], inference: Inference | None = None
                     ) -> dict[str, Any]:
    """Decode and score each video in this process (see module docstring)."""
    inference = inference_for(model, cfg, inference)
    transform = build_test_transform(cfg.data, cfg.model.image_size)
    meter = ClassificationMeter(len(class_names))
    failed: list[tuple[str, str]] = []
    for item in records:
        path, label = _path_label(item)
        try:
            views = load_views(path, cfg, transform)
        except VideoDecodeError as exc:
            log.warning("skipping %s: %s", path, exc)
            failed.append((path, str(exc)))
            continue
        probs = inference.probabilities(model, views).mean(dim=0, keepdim=True)
        meter.update(probs, torch.tensor([label]))
    return _result(meter, class_names, cfg, failed)


def _writable(frames: Any) -> np.ndarray:
    """Arrow-backed batches are read-only; torch warns on (and must not write to) those."""
    frames = np.asarray(frames, dtype=np.uint8)
    return frames if frames.flags.writeable else frames.copy()


@dataclass
class VideoScores:
    """Probabilities summed per video over however many views arrived, from any worker."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    views: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, video_id: str, label: int, prob_sum: np.ndarray, views: int) -> None:
        self.sums[video_id] = self.sums.get(video_id, 0) + prob_sum
        self.views[video_id] = self.views.get(video_id, 0) + views
        self.labels[video_id] = label

    def merge(self, other: "VideoScores") -> "VideoScores":
        for key in other.sums:
            self.add(key, other.labels[key], other.sums[key], other.views[key])
        return self

    def meter(self, num_classes: int) -> ClassificationMeter:
        meter = ClassificationMeter(num_classes)
        if self.sums:
            ids = sorted(self.sums)
            meter.update(np.stack([self.sums[i] / self.views[i] for i in ids]),
                         np.array([self.labels[i] for i in ids]))
        return meter


def score_rows(model: torch.nn.Module, cfg: Config, rows: Iterable[dict[str, Any]],
               inference: Inference | None = None) -> VideoScores:
    """Score batches of evaluation rows (``video_id, label, views``: one temporal view each, its
    spatial crops uint8 ``(crops, T, S, S, 3)``; see :mod:`pipelines.data.clips`).

    Views of a video may arrive in any order, batch or worker: probabilities are summed per
    ``video_id`` here and averaged once all views are in (:meth:`VideoScores.meter`).
    """
    inference = inference_for(model, cfg, inference)
    scores = VideoScores()
    for batch in rows:
        views = torch.as_tensor(_writable(np.stack(list(batch["views"]))))
        crops = views.shape[1]
        probs = inference.probabilities(model, views.flatten(0, 1))
        probs = probs.reshape(len(views), crops, -1).sum(dim=1).numpy()
        for video_id, label, p in zip(batch["video_id"], batch["label"], probs):
            scores.add(str(video_id), int(label), p, crops)
    return scores


def evaluate_dataset(model: torch.nn.Module, cfg: Config, dataset: Any,
                     class_names: Sequence[str], inference: Inference | None = None,
                     failed: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Score a Ray Dataset of test views; ``failed`` passes on the ingest report's bad files."""
    rows = dataset.iter_batches(batch_size=cfg.optim.eval_batch_size, batch_format="numpy")
    scores = score_rows(model, cfg, rows, inference)
    return _result(scores.meter(len(class_names)), class_names, cfg, list(failed))


def evaluate(model: torch.nn.Module, cfg: Config, data: Any, class_names: Sequence[str],
             inference: Inference | None = None) -> dict[str, Any]:
    """Multi-view metrics of ``model`` on ``data``: records / ``(path, label)`` pairs, or a Ray
    Dataset of test views. Returns :meth:`ClassificationMeter.compute` plus ``class_names``,
    ``num_videos``, ``views`` and ``failed`` (``[path, reason]`` of skipped videos)."""
    if hasattr(data, "iter_batches"):
        return evaluate_dataset(model, cfg, data, class_names, inference)
    return evaluate_records(model, cfg, data, class_names, inference)


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------

def summary(metrics: dict[str, Any]) -> str:
    return (f"top-1 {100 * metrics['top1']:.2f}%  top-5 {100 * metrics['top5']:.2f}%  "
            f"mean class {100 * metrics['mean_class_acc']:.2f}%  on {metrics['num_videos']} videos "
            f"({metrics.get('protocol', 'test protocol not recorded')})"
            + (f", {len(metrics['failed'])} unreadable" if metrics.get("failed") else ""))


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``eval.json`` and ``confusion.png`` in ``out_dir``; returns both paths."""
    from pipelines.tracking.plots import plot_confusion

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / EVAL_FILE
    json_path.write_text(json.dumps(metrics, indent=1) + "\n")
    png = plot_confusion(metrics["confusion"], metrics["class_names"], out / CONFUSION_FILE)
    return json_path, png


def log_report(run_id: str, metrics: dict[str, Any], files: Sequence[Path],
               prefix: str = "eval") -> None:
    """Attach the evaluation to an existing MLflow run (``eval_top1`` ..., the test protocol as
    the ``eval_protocol`` tag, and ``eval/`` files)."""
    from mlflow import MlflowClient

    from pipelines.tracking.runs import log_epoch, log_file

    scalars = {f"{prefix}_{k}": metrics[k] for k in ("top1", "top5", "mean_class_acc")}
    log_epoch(scalars, 0, run_id=run_id)
    if "protocol" in metrics:
        MlflowClient().set_tag(run_id, f"{prefix}_protocol", metrics["protocol"])
    for path in files:
        log_file(path, prefix, run_id=run_id)


# ----------------------------------------------------------------------------------------------
# aim-video eval
# ----------------------------------------------------------------------------------------------

def run_eval(cfg: Config, model_ref: str, out_dir: str | Path, engine: str = "local"
             ) -> dict[str, Any]:
    """Evaluate a model on ``cfg``'s val split; write the report; log it to the model's run.

    The architecture (frames, image size, classes) comes from the model's own config, the data and
    test views from ``cfg``. Labels are indexed with the model's class names, so a data folder that
    gained or reordered classes cannot shift them.
    """
    from dataclasses import replace

    from aim_core.annotations import ClassMap, load_split
    from pipelines.tracking.references import is_mlflow_uri, resolve_model, source_run_id
    from pipelines.tracking.runs import configure

    configure(cfg)
    inference = Inference.for_config(cfg)
    model, model_cfg, class_names = resolve_model(model_ref, device=inference.device)
    ecfg = replace(cfg, model=model_cfg.model)
    class_map = ClassMap(class_names) if class_names else None
    if engine == "ray":
        from pipelines.data.clips import evaluation_dataset
        from pipelines.data.scan import read_videos
        from pipelines.runtime import ensure_ray

        ensure_ray()
        videos, class_map, report = read_videos(ecfg, "val", class_map)
        data, names, failed, rejected = (evaluation_dataset(ecfg, videos), class_map.names,
                                         report.bad, report.rejected)
    else:
        split = load_split(ecfg.data, "val", class_map)
        data, names, failed, rejected = split.records, split.class_map.names, [], split.rejected
    if len(names) != model_cfg.model.num_classes:
        raise ValueError(f"the data has {len(names)} classes, the model "
                         f"{model_cfg.model.num_classes} (and no class names to match them by)")
    if rejected:
        log.warning("%d annotated videos left out (label not in the model's classes or file "
                    "missing), e.g. %s", len(rejected), rejected[0])
    if engine == "ray":
        metrics = evaluate_dataset(model, ecfg, data, names, inference, failed)
    else:
        metrics = evaluate_records(model, ecfg, data, names, inference)
    metrics["model"] = str(model_ref)
    metrics["split"] = "val"
    files = write_report(metrics, out_dir)
    run_id = source_run_id(model_ref) if is_mlflow_uri(model_ref) else None
    if run_id:
        log_report(run_id, metrics, files)
        metrics["logged_to_run"] = run_id
    return metrics
