"""Parquet mode: fixed clips decoded once and stored as Parquet shards (``data.mode: parquet``).

Training clips are drawn with epoch 0 and augmented afresh every epoch as they are read
(:func:`pipelines.data.clips.shard_training_dataset`); test views are stored as they are. Each
shard holds ``data.videos_per_task`` videos, written by the task that decoded them, atomically. A
shard's file name and footer carry the fingerprint of what it was planned to hold, so a re-run
reuses exactly the complete shards of the same plan and writes the rest: an interrupted run
resumes, and one with other settings never mistakes old clips for new ones. The previous data set
stays readable until the new manifest replaces it, and a run that read no video never replaces a
manifest that lists clips.

Rows (one per temporal view)::

    video_id: str   path: str   label: int64   view: int32   frames: uint8 (T, H, W, C)

``frames`` is a fixed-shape tensor column when all videos share an aspect ratio, a variable-shaped
one otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from aim_core.annotations import AnnotationError, ClassMap, VideoRecord
from aim_core.config import Config, DataConfig
from aim_core.storage import Location, join

from pipelines.data.clips import decode_views
from pipelines.data.scan import (REPORT_FILE, IngestReport, SplitName, decode_task_resources,
                                 failure_reason, select_records, video_item)

log = logging.getLogger(__name__)

CLIP_COLUMNS = ["video_id", "path", "label", "view", "frames"]
CLASS_MAP_FILE = "class_map.json"
MANIFEST_FILE = "manifest.json"
# What decides a stored clip's content: the DataConfig fields below and the version of the
# sampling rules (2: the released uniform rule). A shard planned with other values is rewritten.
CLIP_FIELDS = ("sampler", "frame_interval", "test_clips", "short_side", "seed")
SAMPLING_RULES = 2
# Parquet footer key of a shard's own summary: plan fingerprint, videos, clips, bad files.
SHARD_SUMMARY_KEY = b"aim_video.shard"


def materialize(cfg: Config, split: SplitName, out_dir: str | None = None, *,
                train: bool | None = None, class_map: ClassMap | None = None) -> str:
    """Write ``split`` as Parquet shards under ``out_dir/split``; returns that folder.

    The class map is read from ``out_dir/class_map.json`` when present (so train and val agree),
    otherwise derived from the annotations and saved there. Shards already on disk with the same
    contents plan are kept; the manifest counts how many each run wrote and skipped. Shards of
    earlier plans are removed once the new manifest, which no longer needs them, is in place.
    """
    start = time.perf_counter()
    out = out_dir or default_output_dir(cfg)
    train = split == "train" if train is None else train
    chosen = select_records(cfg, split, class_map or load_class_map(out))
    folder = join(out, split)
    where = Location.of(folder)
    where.make_dirs()
    sampling, shards = _plan_shards(cfg, chosen.records, train)
    summaries = {s["file"]: _shard_summary(where, s) for s in shards}
    todo = [s for s in shards if summaries[s["file"]] is None]
    if todo:
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        ds.map(_write_shard, **decode_task_resources(cfg),
               fn_kwargs={"folder": folder, "data": cfg.data, "clip_len": cfg.model.num_frames,
                          "train": train}).take_all()
        summaries.update({s["file"]: _written_summary(where, s) for s in todo})

    bad = [(p, r) for s in shards for p, r in summaries[s["file"]]["bad"]]
    previous = _read_manifest(where) or {}
    runs = previous.get("runs", []) + [{"written": len(todo), "skipped": len(shards) - len(todo)}]
    manifest = {"split": split, "class_map": f"../{CLASS_MAP_FILE}", "sampling": sampling,
                "columns": CLIP_COLUMNS, "videos": len(chosen.records),
                "clips": sum(x["clips"] for x in summaries.values()),
                "shards": [{"file": s["file"], "videos": summaries[s["file"]]["videos"],
                            "clips": summaries[s["file"]]["clips"]} for s in shards],
                "runs": runs}
    _refuse_to_empty(where, previous, manifest, cfg.data.root, bad)
    chosen.class_map.save(join(out, CLASS_MAP_FILE))
    (where / MANIFEST_FILE).write_json(manifest)
    if manifest["clips"]:
        _remove_stale_shards(where, {s["file"] for s in shards})
    report = IngestReport(split, "parquet", videos=len(chosen.records),
                          good=len(chosen.records) - len(bad), clips=manifest["clips"], bad=bad,
                          rejected=chosen.rejected, seconds=time.perf_counter() - start,
                          empty_class_folders=chosen.empty_class_folders)
    (where / REPORT_FILE).write_json(report.to_dict())
    return folder


def read_shards(folder: str) -> ray.data.Dataset:
    """The clips of a materialised split (the shards the manifest lists, nothing half-written)."""
    manifest = read_plan(folder)
    files = [join(folder, s["file"]) for s in manifest["shards"] if s["clips"]]
    if not files:
        raise ValueError(f"{folder}: the manifest lists no clips (see {REPORT_FILE})")
    return ray.data.read_parquet(files).select_columns(CLIP_COLUMNS)


def read_plan(folder: str) -> dict[str, Any]:
    """The split's manifest: its shards (file names carry their plan's fingerprint), videos, clips."""
    manifest = _read_manifest(Location.of(folder))
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no readable {MANIFEST_FILE} (missing or unreadable); "
                                f"run `aim-video ingest`, which rebuilds it from the shards")
    return manifest


def read_report(folder: str) -> IngestReport:
    data = (Location.of(folder) / REPORT_FILE).read_json()
    if data is None:
        raise FileNotFoundError(f"{folder}: no {REPORT_FILE}")
    data["bad"] = [(b["path"], b["reason"]) for b in data["bad"]]
    data["rejected"] = [(b["path"], b["reason"]) for b in data["rejected"]]
    return IngestReport(**data)


def _plan_shards(cfg: Config, records: list[VideoRecord], train: bool
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sampling settings and one spec per shard; the file name carries the fingerprint of
    the shard's videos and settings, so shards of different plans never share a file."""
    per = cfg.data.videos_per_task
    sampling = {"clip_len": cfg.model.num_frames, "train": train, "epoch": 0,
                "rules": SAMPLING_RULES, **{k: getattr(cfg.data, k) for k in CLIP_FIELDS}}
    shards = []
    for i in range(math.ceil(len(records) / per)):
        items = [video_item(r) for r in records[i * per:(i + 1) * per]]
        fingerprint = hashlib.sha256(json.dumps([items, sampling], sort_keys=True)
                                     .encode()).hexdigest()[:16]
        shards.append({"shard": i, "file": f"shard-{i:05d}-{fingerprint}.parquet",
                       "fingerprint": fingerprint, "items": json.dumps(items)})
    return sampling, shards


def _write_shard(spec: dict[str, Any], *, folder: str, data: DataConfig, clip_len: int,
                 train: bool) -> dict[str, Any]:
    """Decode one shard's videos and write them as one Parquet file, replaced whole, whose footer
    holds the shard's summary: whatever shard file exists is complete and says what it holds."""
    items = json.loads(spec["items"])
    batch = {k: np.array([it[k] for it in items], dtype=object) for k in ("video_id", "path")}
    batch["label"] = np.array([it["label"] for it in items], np.int64)
    clips, errors = _decode_batch(batch, data, clip_len, train, epoch=0)
    summary = {"fingerprint": spec["fingerprint"], "videos": len(items), "clips": len(clips),
               "bad": errors}
    table = _table(clips).replace_schema_metadata({SHARD_SUMMARY_KEY: json.dumps(summary)})
    (Location.of(folder) / spec["file"]).write_with(lambda f: pq.write_table(table, f))
    return {"shard": spec["shard"], "clips": len(clips)}


def _shard_summary(where: Location, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The summary in a shard's footer when the file is there and holds the planned contents."""
    try:
        with (where / spec["file"]).open_for_reading() as source:
            footer = pq.read_metadata(source).metadata or {}
        summary = json.loads(footer[SHARD_SUMMARY_KEY])
    except (OSError, KeyError, ValueError):  # absent, not Parquet, or not one of our shards
        return None
    return summary if summary.get("fingerprint") == spec["fingerprint"] else None


def _written_summary(where: Location, spec: dict[str, Any]) -> dict[str, Any]:
    summary = _shard_summary(where, spec)
    if summary is None:
        raise RuntimeError(f"{where / spec['file']}: the shard just written cannot be read back")
    return summary


def _read_manifest(where: Location) -> dict[str, Any] | None:
    """The split's manifest; an unreadable one (e.g. truncated by a crash) counts as missing,
    which the next run of :func:`materialize` rebuilds from the shards."""
    try:
        manifest = (where / MANIFEST_FILE).read_json()
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s is unreadable (%s); treating it as missing", where / MANIFEST_FILE, exc)
        return None
    return manifest if isinstance(manifest, dict) and "shards" in manifest else None


def _refuse_to_empty(where: Location, previous: dict[str, Any], manifest: dict[str, Any],
                     root: str, bad: list[tuple[str, str]]) -> None:
    """A run that decoded nothing (wrong root, unreachable storage) must not replace a data set
    that holds clips: the old manifest and its shards stay as they are."""
    if manifest["clips"] or not previous.get("clips"):
        return
    first = f"; first: {bad[0][0]}: {bad[0][1]}" if bad else ""
    raise AnnotationError(f"data.root: not replacing {where / MANIFEST_FILE}, which lists "
                          f"{previous['clips']} clips, with one that lists none: no video under "
                          f"{root} could be read ({len(bad)} tried{first})")


def _remove_stale_shards(where: Location, keep: set[str]) -> None:
    """Shards of earlier plans, sidecars of the old layout and temporary files of crashed writes."""
    for name in where.names():
        if name.startswith(("shard-", ".shard-")) and name not in keep:
            (where / name).delete()


def _table(clips: list[dict[str, Any]]) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    cols = _columns(clips) if clips else None
    if cols is None:  # an all-bad shard: an empty file keeps "exists means done" true
        return pa.table({"video_id": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                         "label": pa.array([], pa.int64()), "view": pa.array([], pa.int32())})
    return pa.table({"video_id": pa.array(list(cols["video_id"]), pa.string()),
                     "path": pa.array(list(cols["path"]), pa.string()),
                     "label": pa.array(cols["label"], pa.int64()),
                     "view": pa.array(cols["view"], pa.int32()),
                     "frames": ArrowTensorArray.from_numpy(cols["frames"])})


def _decode_batch(batch: dict[str, np.ndarray], data: DataConfig, clip_len: int, train: bool,
                  epoch: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Clips (one per view) of every readable video in ``batch``, and ``(path, reason)`` of the rest."""
    clips, errors = [], []
    for i, path in enumerate(batch["path"]):
        video = {k: batch[k][i] for k in batch}
        try:
            views = decode_views(video, data, clip_len, train, epoch)
        except Exception as exc:  # report and move on; one bad file must not cost the others
            errors.append((str(path), failure_reason(exc, str(path))))
            continue
        clips += [{"video_id": str(video["video_id"]), "path": str(path),
                   "label": int(video["label"]), "view": view, "frames": clip}
                  for view, clip in enumerate(views)]
    return clips, errors


def _columns(clips: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    shapes = {c["frames"].shape for c in clips}
    if len(shapes) == 1:
        frames = np.stack([c["frames"] for c in clips])
    else:  # different aspect ratios: a variable-shaped tensor column
        frames = np.empty(len(clips), dtype=object)
        frames[:] = [c["frames"] for c in clips]
    return {"video_id": np.array([c["video_id"] for c in clips], dtype=object),
            "path": np.array([c["path"] for c in clips], dtype=object),
            "label": np.array([c["label"] for c in clips], np.int64),
            "view": np.array([c["view"] for c in clips], np.int32),
            "frames": frames}


def default_output_dir(cfg: Config) -> str:
    return cfg.data.shards_dir or join(cfg.run.storage_path, f"{cfg.run.name}/data")


def load_class_map(out_dir: str) -> ClassMap | None:
    """The class map saved beside an ingest output folder (local or URI), if any."""
    path = join(out_dir, CLASS_MAP_FILE)
    return ClassMap.load(path) if Location.of(path).is_file() else None
