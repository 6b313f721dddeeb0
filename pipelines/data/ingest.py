"""Ray Data ingest: labelled video files -> uint8 clips, with bad files skipped and reported.

Why not ``ray.data.read_videos``: it needs decord and yields one row per decoded frame. Instead the
file list comes from :mod:`aim_core.annotations` (local, ``s3://``, ``gs://``), becomes a dataset
with ``from_items``, and PyAV decodes only the sampled frames inside ``map_batches``, several videos
per CPU-only task (``data.videos_per_task``, ``run.ingest_cpus``, no GPUs).

Rows (one row per temporal view; evaluation averages the views of a ``video_id``)::

    video_id: str   path: str   label: int64   view: int32   frames: uint8 (T, H, W, C)

``frames`` is a fixed-shape tensor column when all videos share an aspect ratio, a variable-shaped
one otherwise. Feed training with :func:`training_columns` (``iter_torch_batches`` fails on strings).

Two modes:

- ``stream``: a scan pass probes every file once (frame count; unreadable files reported), then
  :class:`ClipStream` builds a dataset per epoch whose map function draws the temporal indices from
  ``(seed, epoch, video_id)``: fresh clips every epoch, reproducible per epoch and per video.
- ``parquet``: fixed clips (training clips drawn with epoch 0) written as Parquet shards of
  ``videos_per_task`` videos, each by the task that decoded it, atomically (temporary name, then
  rename). A shard's file name and footer carry the fingerprint of what it was planned to hold,
  so a re-run reuses exactly the complete shards of the same plan and writes the rest: an
  interrupted run resumes, and one with other settings never mistakes old clips for new ones.
  The previous data set stays readable until the new manifest replaces it, and a run that read no
  video never replaces a manifest that lists clips.

Bad files (corrupt, truncated, empty, audio-only, unreadable) never fail the job: the map
functions return them as rows with an ``error`` string, the driver filters them out, and
``ingest_report.json`` lists ``(path, reason)`` for each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from aim_core.annotations import (AnnotationError, ClassMap, Split, VideoRecord, fraction_subset,
                                  load_split)
from aim_core.config import Config, DataConfig
from aim_core.storage import Location, join
from aim_core.video import (VideoDecodeError, clip_indices, decode_frames, open_video_source,
                            probe_video)

from pipelines import console
from pipelines.resources import ingest_resources

log = logging.getLogger(__name__)

SplitName = Literal["train", "val"]
CLIP_COLUMNS = ["video_id", "path", "label", "view", "frames"]
TRAIN_COLUMNS = ["frames", "label"]
CLASS_MAP_FILE = "class_map.json"
REPORT_FILE = "ingest_report.json"
MANIFEST_FILE = "manifest.json"
# The DataConfig fields that decide a stored clip's content: a shard planned with other values is
# rewritten on the next run instead of being reused.
CLIP_FIELDS = ("sampler", "frame_interval", "test_clips", "short_side", "seed")
# Parquet footer key of a shard's own summary: plan fingerprint, videos, clips, bad files.
SHARD_SUMMARY_KEY = b"aim_video.shard"


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------

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
        text = (f"[ingest {self.split}/{self.mode}] {self.good}/{self.videos} videos readable"
                f"{clips}, {len(self.bad)} bad, {len(self.rejected)} rejected by the annotations"
                f"{empty_text} ({self.seconds:.1f} s)")
        for path, reason in (self.bad + self.rejected)[:10]:
            text += f"\n  skipped {path}: {reason}"
        if len(self.bad) + len(self.rejected) > 10:
            text += f"\n  ... {len(self.bad) + len(self.rejected) - 10} more in {REPORT_FILE}"
        return text


@dataclass
class IngestResult:
    """A split's clips as a Ray Dataset, with the class map, the report and (stream) the source
    of later epochs."""

    dataset: ray.data.Dataset
    class_map: ClassMap
    report: IngestReport
    stream: "ClipStream | None" = None


# ----------------------------------------------------------------------------------------------
# Selecting and scanning videos
# ----------------------------------------------------------------------------------------------

def select_records(cfg: Config, split: SplitName, class_map: ClassMap | None = None) -> Split:
    """The split's records; the training split is cut to ``data.train_fraction`` (nested subsets)."""
    chosen = load_split(cfg.data, split, class_map)
    if split == "train" and cfg.data.train_fraction < 1:
        chosen.records = fraction_subset(chosen.records, cfg.data.train_fraction, cfg.data.seed)
    return chosen


def scan_videos(cfg: Config, records: list[VideoRecord]
                ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Probe every file once on Ray: ``(good items with num_frames, [(path, reason)] for bad)``."""
    if not records:
        return [], []
    items = [_item(r) for r in records]
    ds = ray.data.from_items(items, override_num_blocks=_blocks(len(items), cfg.data.videos_per_task))
    probed = ds.map_batches(_probe_batch, batch_size=cfg.data.videos_per_task,
                            **decode_task_resources(cfg))
    by_path = {}
    with console.progress(len(items), "scan videos") as bar:
        for batch in probed.iter_batches(batch_size=None, batch_format="numpy"):
            for path, num_frames, error in zip(batch["path"], batch["num_frames"], batch["error"]):
                by_path[str(path)] = {"num_frames": num_frames, "error": error}
            bar.advance(len(batch["path"]))
    good, bad = [], []
    for item in items:  # keep the annotation order, whatever order the tasks finished in
        row = by_path[item["path"]]
        if row["error"]:
            bad.append((item["path"], str(row["error"])))
        else:
            good.append({**item, "num_frames": int(row["num_frames"])})
    return good, bad


def decode_task_resources(cfg: Config) -> dict[str, Any]:
    """Ray remote args of a decode task: CPUs only, on the CPU decode nodes when the cluster has
    them, so decoding never holds a GPU that a training worker waits for."""
    return ingest_resources(cfg.run, ray.cluster_resources() if ray.is_initialized() else None)


def _probe_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    num_frames, errors = [], []
    for path in batch["path"]:
        try:
            with open_video_source(str(path)) as source:
                num_frames.append(probe_video(source).num_frames)
            errors.append("")
        except Exception as exc:  # any failure to read a file is a report entry, not a crash
            num_frames.append(0)
            errors.append(_reason(exc, str(path)))
    return {"path": batch["path"], "num_frames": np.array(num_frames, np.int64),
            "error": np.array(errors, dtype=object)}


# ----------------------------------------------------------------------------------------------
# Stream mode
# ----------------------------------------------------------------------------------------------

@dataclass
class ClipStream:
    """Scanned videos of one split; :meth:`dataset` gives the clips of one epoch.

    Building a dataset is cheap (no I/O until iterated), so a training loop asks for one per epoch:
    the epoch number is what makes each epoch's temporal samples (and video order) differ while
    staying reproducible. ``shard=(rank, world_size)`` gives each worker a disjoint share.
    """

    data: DataConfig
    remote_args: dict[str, Any]              # CPU-only decode tasks (see decode_task_resources)
    clip_len: int
    train: bool
    items: list[dict[str, Any]]

    def dataset(self, epoch: int = 0, shard: tuple[int, int] | None = None,
                columns: list[str] | None = None) -> ray.data.Dataset:
        """``columns`` keeps only those, inside the decode task itself: a separate projection
        step would ask Ray for another whole CPU, which small clusters may not have to spare."""
        items = list(self.items)
        if self.train:  # a new video order every epoch; the permutation is shared by all ranks
            order = np.random.default_rng([self.data.seed, epoch]).permutation(len(items))
            items = [items[i] for i in order]
        if shard is not None:
            rank, world = shard
            items = items[rank::world]
        if not items:  # an empty split is reported, not raised: the other split may be fine
            log.warning("no readable videos to stream (see the ingest report)")
            return ray.data.from_items([])
        ds = ray.data.from_items(items, override_num_blocks=_blocks(len(items),
                                                                    self.data.videos_per_task))
        return ds.map_batches(_decode_stream_batch, batch_size=self.data.videos_per_task,
                              **self.remote_args,
                              fn_kwargs={"data": self.data, "clip_len": self.clip_len,
                                         "train": self.train, "epoch": epoch,
                                         "columns": columns})


def _decode_stream_batch(batch: dict[str, np.ndarray], *, data: DataConfig, clip_len: int,
                         train: bool, epoch: int, columns: list[str] | None = None
                         ) -> Iterator[dict[str, Any]]:
    """Decode a few videos; a file that became unreadable since the scan is logged and skipped."""
    clips, errors = _decode_batch(batch, data, clip_len, train, epoch)
    for path, reason in errors:
        log.warning("skipping %s: %s", path, reason)
    if clips:  # a generator may yield nothing: no empty batch with a made-up frame shape
        out = _columns(clips)
        yield {k: out[k] for k in columns} if columns else out


def build_dataset(cfg: Config, split: SplitName, *, train: bool, epoch: int = 0,
                  class_map: ClassMap | None = None) -> IngestResult:
    """Stream-mode clips of ``split`` for ``epoch`` (scan first, so the report is complete).

    ``train=True`` draws one random clip per video; ``train=False`` the ``data.test_clips`` views.
    Later epochs: ``result.stream.dataset(epoch)``.
    """
    start = time.perf_counter()
    chosen = select_records(cfg, split, class_map)
    items, bad = scan_videos(cfg, chosen.records)
    report = IngestReport(split, "stream", videos=len(chosen.records), good=len(items), bad=bad,
                          rejected=chosen.rejected, seconds=time.perf_counter() - start,
                          empty_class_folders=chosen.empty_class_folders)
    stream = ClipStream(cfg.data, decode_task_resources(cfg), cfg.model.num_frames, train, items)
    return IngestResult(stream.dataset(epoch), chosen.class_map, report, stream)


def training_columns(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Only the numeric columns a training loop needs (``iter_torch_batches`` rejects strings)."""
    return ds.select_columns(TRAIN_COLUMNS)


# ----------------------------------------------------------------------------------------------
# Parquet mode
# ----------------------------------------------------------------------------------------------

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
    manifest = _read_manifest(Location.of(folder))
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no readable {MANIFEST_FILE} (missing or unreadable); "
                                f"run `aim-video ingest`, which rebuilds it from the shards")
    files = [join(folder, s["file"]) for s in manifest["shards"] if s["clips"]]
    if not files:
        raise ValueError(f"{folder}: the manifest lists no clips (see {REPORT_FILE})")
    return ray.data.read_parquet(files).select_columns(CLIP_COLUMNS)


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
                **{k: getattr(cfg.data, k) for k in CLIP_FIELDS}}
    shards = []
    for i in range(math.ceil(len(records) / per)):
        items = [_item(r) for r in records[i * per:(i + 1) * per]]
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


# ----------------------------------------------------------------------------------------------
# The CLI backend
# ----------------------------------------------------------------------------------------------

def default_output_dir(cfg: Config) -> str:
    return cfg.data.shards_dir or join(cfg.run.storage_path, f"{cfg.run.name}/data")


def run_ingest(cfg: Config, out_dir: str | None = None) -> dict[str, IngestReport]:
    """``aim-video ingest``: both splits in ``data.mode``; class map and report saved in
    ``out_dir`` (default ``data.shards_dir`` or ``<storage_path>/<name>/data``)."""
    out = out_dir or default_output_dir(cfg)
    reports: dict[str, IngestReport] = {}
    class_map = load_class_map(out)
    for split in ("train", "val"):
        if cfg.data.mode == "parquet":
            reports[split] = read_report(materialize(cfg, split, out, class_map=class_map))
            class_map = ClassMap.load(join(out, CLASS_MAP_FILE))
        else:
            result = build_dataset(cfg, split, train=split == "train", class_map=class_map)
            class_map, reports[split] = result.class_map, result.report
            class_map.save(join(out, CLASS_MAP_FILE))
        console.say(reports[split].summary())
    (Location.of(out) / REPORT_FILE).write_json({k: r.to_dict() for k, r in reports.items()})
    if not any(r.good for r in reports.values()):
        tried = sum(r.videos for r in reports.values())
        raise AnnotationError(f"data.root: no readable videos under {cfg.data.root} ({tried} "
                              f"tried; see {join(out, REPORT_FILE)})")
    return reports


# ----------------------------------------------------------------------------------------------
# Decoding shared by both modes
# ----------------------------------------------------------------------------------------------

def _decode_batch(batch: dict[str, np.ndarray], data: DataConfig, clip_len: int, train: bool,
                  epoch: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Clips (one per view) of every readable video in ``batch``, and ``(path, reason)`` of the rest.

    Indices come from ``(seed, epoch, video_id)`` so a video's clip does not depend on which task
    or batch it lands in. All views of a video are decoded in one pass.
    """
    clips, errors = [], []
    known = batch.get("num_frames")
    for i, (video_id, path) in enumerate(zip(batch["video_id"], batch["path"])):
        video_id, path = str(video_id), str(path)
        rng = np.random.default_rng([data.seed, epoch, zlib.crc32(video_id.encode())])
        try:
            with open_video_source(path) as source:
                n = int(known[i]) if known is not None else probe_video(source).num_frames
                views = clip_indices(data, n, clip_len, train=train, rng=rng)
                frames = decode_frames(source, [j for v in views for j in v],
                                       short_side=data.short_side, threads=data.decode_threads)
        except Exception as exc:  # report and move on; one bad file must not cost the others
            errors.append((path, _reason(exc, path)))
            continue
        for view, clip in enumerate(frames.reshape(len(views), clip_len, *frames.shape[1:])):
            clips.append({"video_id": video_id, "path": path, "label": int(batch["label"][i]),
                          "view": view, "frames": clip})
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


def _reason(exc: BaseException, path: str) -> str:
    """The error message without the path it repeats (the report pairs them anyway)."""
    text = str(exc).removeprefix(f"{path}: ")
    return text if isinstance(exc, VideoDecodeError) else f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def load_class_map(out_dir: str) -> ClassMap | None:
    """The class map saved beside an ingest output folder (local or URI), if any."""
    path = join(out_dir, CLASS_MAP_FILE)
    return ClassMap.load(path) if Location.of(path).is_file() else None


def _item(record: VideoRecord) -> dict[str, Any]:
    return {"video_id": record.video_id, "path": record.path, "label": record.label}


def _blocks(n: int, per_task: int) -> int:
    return max(1, math.ceil(n / per_task))
