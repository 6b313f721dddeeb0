"""Which videos a split has, and which of them can be read: listed from the annotations, probed
once on Ray (frame counts; unreadable files reported, never fatal).

Bad files (corrupt, truncated, empty, audio-only, unreadable) are returned with their reason and
listed in ``ingest_report.json``; the job goes on with every good video.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import ray

from aim_core.annotations import ClassMap, Split, VideoRecord, fraction_subset, load_split
from aim_core.config import Config
from aim_core.video import VideoDecodeError, open_video_source, probe_video

from pipelines import console
from pipelines.resources import ingest_resources

SplitName = Literal["train", "val"]
REPORT_FILE = "ingest_report.json"


@dataclass
class IngestReport:
    """What ingest did with one split. ``bad``: unreadable files; ``rejected``: annotated videos
    left out before decoding (label not in the class map, file missing, link out of the root);
    ``empty_class_folders``: class folders without videos that the class map lists."""

    split: str
    mode: str
    videos: int = 0
    good: int = 0
    clips: int | None = None                 # known after decoding (parquet); None for stream
    bad: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    empty_class_folders: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bad"] = [{"path": p, "reason": r} for p, r in self.bad]
        data["rejected"] = [{"path": p, "reason": r} for p, r in self.rejected]
        return data

    def summary(self) -> str:
        clips = "" if self.clips is None else f", {self.clips} clips"
        empty = len(self.empty_class_folders)
        empty_text = f", {empty} empty class folder{'s' if empty > 1 else ''}" if empty else ""
        prepare = self.mode == "prepare"
        stage = f"prepare {self.split}" if prepare else f"ingest {self.split}/{self.mode}"
        text = (f"[{stage}] {self.good}/{self.videos} videos readable"
                f"{clips}, {len(self.bad)} bad, {len(self.rejected)} rejected by the annotations"
                f"{empty_text} ({self.seconds:.1f} s)")
        for path, reason in (self.bad + self.rejected)[:10]:
            text += f"\n  skipped {path}: {reason}"
        if len(self.bad) + len(self.rejected) > 10:
            where = "prepare_report.json" if prepare else REPORT_FILE
            text += f"\n  ... {len(self.bad) + len(self.rejected) - 10} more in {where}"
        return text


def select_records(cfg: Config, split: SplitName, class_map: ClassMap | None = None) -> Split:
    """The split's records; the training split is cut to ``data.train_fraction`` (nested subsets)."""
    chosen = load_split(cfg.data, split, class_map)
    if split == "train" and cfg.data.train_fraction < 1:
        chosen.records = fraction_subset(chosen.records, cfg.data.train_fraction, cfg.data.seed)
    return chosen


def read_videos(cfg: Config, split: SplitName, class_map: ClassMap | None = None
                ) -> tuple[list[dict[str, Any]], ClassMap, IngestReport]:
    """The split's readable videos (``video_id, path, label, num_frames``), its class map and
    the report of what was left out."""
    start = time.perf_counter()
    chosen = select_records(cfg, split, class_map)
    videos, bad = scan_videos(cfg, chosen.records)
    report = IngestReport(split, cfg.data.mode, videos=len(chosen.records), good=len(videos),
                          bad=bad, rejected=chosen.rejected, seconds=time.perf_counter() - start,
                          empty_class_folders=chosen.empty_class_folders)
    return videos, chosen.class_map, report


def scan_videos(cfg: Config, records: list[VideoRecord]
                ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Probe every file once on Ray: ``(good items with num_frames and keyframe_indices /
    keyframe_pts, [(path, reason)] for bad)``."""
    if not records:
        return [], []
    items = [video_item(r) for r in records]
    ds = ray.data.from_items(items, override_num_blocks=blocks(len(items), cfg.data.videos_per_task))
    probed = ds.map_batches(_probe_batch, batch_size=cfg.data.videos_per_task,
                            **decode_task_resources(cfg))
    by_path = {}
    with console.progress(len(items), "scan videos") as bar:
        for batch in probed.iter_batches(batch_size=None, batch_format="numpy"):
            for i, path in enumerate(batch["path"]):
                by_path[str(path)] = {k: batch[k][i] for k in batch}
            bar.advance(len(batch["path"]))
    good, bad = [], []
    for item in items:  # keep the annotation order, whatever order the tasks finished in
        row = by_path[item["path"]]
        if row["error"]:
            bad.append((item["path"], str(row["error"])))
        else:
            good.append({**item, "num_frames": int(row["num_frames"]),
                         "keyframe_indices": [int(i) for i in row["keyframe_indices"]],
                         "keyframe_pts": [int(p) for p in row["keyframe_pts"]]})
    return good, bad


def decode_task_resources(cfg: Config) -> dict[str, Any]:
    """Ray remote args of a decode task: CPUs only, on the CPU decode nodes when the cluster has
    them, so decoding never holds a GPU that a training worker waits for."""
    return ingest_resources(cfg.run, ray.cluster_resources() if ray.is_initialized() else None)


def _probe_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Frame count and keyframe table of each file (one demuxing pass, no decoding): every later
    clip of the video seeks straight to the keyframes it needs."""
    num_frames, indices, pts, errors = [], [], [], []
    for path in batch["path"]:
        try:
            with open_video_source(str(path)) as source:
                info = probe_video(source, keyframes=True)
            num_frames.append(info.num_frames)
            indices.append(list(info.keyframes.indices))
            pts.append(list(info.keyframes.pts))
            errors.append("")
        except Exception as exc:  # any failure to read a file is a report entry, not a crash
            num_frames.append(0)
            indices.append([])
            pts.append([])
            errors.append(failure_reason(exc, str(path)))
    return {"path": batch["path"], "num_frames": np.array(num_frames, np.int64),
            "keyframe_indices": indices, "keyframe_pts": pts,
            "error": np.array(errors, dtype=object)}


def failure_reason(exc: BaseException, path: str) -> str:
    """The error message without the path it repeats (the report pairs them anyway)."""
    text = str(exc).removeprefix(f"{path}: ")
    return text if isinstance(exc, VideoDecodeError) else f"{type(exc).__name__}: {text}"


def video_item(record: VideoRecord) -> dict[str, Any]:
    return {"video_id": record.video_id, "path": record.path, "label": record.label}


def blocks(n: int, per_task: int) -> int:
    """Blocks of ``per_task`` videos: the unit of one decode task."""
    return max(1, math.ceil(n / per_task))
