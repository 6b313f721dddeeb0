"""``aim-video prepare``: convert a raw data set once into prepared storage, resumably, on Ray.

Both splits of the configured data set (any annotation format, local or object store; every video,
whatever ``data.train_fraction`` says, so subset studies share one prepared set) are converted
video by video in Ray Data CPU tasks (:func:`aim_core.prepared.prepare_video`, settings in the
config's ``prepare`` section). The output holds::

    manifest.json            the dataset manifest (aim_core.manifest), written last
    prepare.json             the storage settings: a re-run must use the same ones
    prepare_report.json      per split, the bad and rejected files (as ingest reports them)
    videos/<split>/<id>.mp4  the prepared files (.zip for JPEG frames)
    entries/<split>/<id>.json  one per finished video, written after its file

A video counts as finished once its entry exists and its file has the recorded size, so an
interrupted run, re-run, redoes only the rest, and a complete set re-run redoes nothing and gives
the same manifest. A source changed in place after it was prepared is not noticed (that would mean
hashing every source again); delete its entry to redo it. Bad files are skipped, reported, and
tried again by the next run. Nothing outside the output is written, and an output that holds
something else, or was prepared with other settings, is refused before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from typing import IO, Any, Iterator

import numpy as np
import ray

from aim_core.annotations import AnnotationError, ClassMap, Split, load_split
from aim_core.config import Config, ConfigError, PrepareConfig
from aim_core.manifest import SPLITS, DatasetManifest, ManifestEntry
from aim_core.prepared import prepare_video
from aim_core.storage import Location, file_sha256, is_uri, join

from pipelines import console
from pipelines.data.scan import IngestReport, blocks, decode_task_resources, failure_reason

SETTINGS_FILE = "prepare.json"
REPORT_FILE = "prepare_report.json"
READ_BLOCK = 1 << 20


def output_of(cfg: Config) -> str:
    """``prepare.output``, or ``<data.root>-prepared`` beside the raw set."""
    return cfg.prepare.output or f"{cfg.data.root.rstrip('/')}-prepared"


def run_prepare(cfg: Config) -> DatasetManifest:
    """Prepare both splits into :func:`output_of`; returns the manifest it wrote."""
    out = output_of(cfg)
    check_output(cfg, out)
    splits = _splits(cfg)
    (Location.of(out) / SETTINGS_FILE).write_json({"storage": cfg.prepare.storage()})
    _remove_partials(out)
    start = time.perf_counter()
    items = [_item(split, record, cfg.prepare) for split in SPLITS
             for record in splits[split].records]
    rows = _convert(cfg, out, items)
    manifest, reports = _assemble(cfg, splits, items, rows, time.perf_counter() - start)
    (Location.of(out) / REPORT_FILE).write_json({s: r.to_dict() for s, r in reports.items()})
    for report in reports.values():
        console.say(report.summary())
    if not manifest.entries:
        raise AnnotationError(f"data.root: no readable videos under {cfg.data.root} "
                              f"({len(items)} tried; see {join(out, REPORT_FILE)})")
    manifest.save(out)
    sizes = manifest.split_sizes()
    console.say(f"prepared {out}: {sizes['train']} train and {sizes['val']} val videos, "
                f"{len(manifest.classes)} classes, manifest digest {manifest.digest()}")
    console.say(f"train on it with --set data.format=prepared --set data.root={out}")
    return manifest


def check_output(cfg: Config, out: str) -> None:
    """Refuse an output inside the raw set, one that holds something other than a prepared set,
    and one prepared with other settings: a re-run never mixes two kinds of files."""
    root, target = cfg.data.root.rstrip("/"), out.rstrip("/")
    if target == root or target.startswith(root + "/"):
        raise ConfigError(f"prepare.output: {out} is inside data.root ({cfg.data.root}); the "
                          f"prepared files would be listed as videos of the raw set")
    location = Location.of(out)
    names = [n for n in location.names() if not n.startswith(".")]
    if not names:
        return
    settings = (location / SETTINGS_FILE).read_json()
    if settings is None:
        raise ConfigError(f"prepare.output: {out} already holds files ({', '.join(names[:3])}"
                          f"{', ...' if len(names) > 3 else ''}) and is not a prepared set; "
                          f"choose a new or empty folder")
    differ = [f"{k}: {v!r} here, {settings['storage'].get(k)!r} there"
              for k, v in cfg.prepare.storage().items() if settings["storage"].get(k) != v]
    if differ:
        raise ConfigError(f"prepare.{differ[0]} (in {join(out, SETTINGS_FILE)}); a re-run "
                          f"needs the same settings: choose another prepare.output for new ones")


def _splits(cfg: Config) -> dict[str, Split]:
    train = load_split(cfg.data, "train")
    return {"train": train, "val": load_split(cfg.data, "val", train.class_map)}


def file_name(video_id: str) -> str:
    """The video id as a relative path when it is a safe one, else a name derived from it."""
    parts = video_id.split("/")
    safe = ("\\" not in video_id and "\0" not in video_id
            and not any(p in ("", ".", "..") for p in parts))
    return video_id if safe else "id-" + hashlib.sha256(video_id.encode()).hexdigest()[:16]


def _item(split: str, record: Any, fmt: PrepareConfig) -> dict[str, Any]:
    name = file_name(record.video_id)
    return {"split": split, "video_id": record.video_id, "label": record.label,
            "label_name": record.label_name, "source": record.path,
            "path": f"videos/{split}/{name}{fmt.suffix}", "entry": f"entries/{split}/{name}.json"}


def _convert(cfg: Config, out: str, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run the conversion on Ray; the outcome of each item by its entry path."""
    if not items:
        return {}
    ds = ray.data.from_items(items, override_num_blocks=blocks(len(items),
                                                               cfg.data.videos_per_task))
    done = ds.map_batches(partial(_prepare_batch, out=out, fmt=cfg.prepare), batch_size=1,
                          **decode_task_resources(cfg))
    rows: dict[str, dict[str, Any]] = {}
    with console.progress(len(items), "prepare videos") as bar:
        for batch in done.iter_batches(batch_size=None, batch_format="numpy"):
            for i, key in enumerate(batch["entry"]):
                rows[str(key)] = {"status": str(batch["status"][i]),
                                  "result": str(batch["result"][i])}
            bar.advance(len(batch["entry"]))
            bar.describe(f"{sum(r['status'] == 'bad' for r in rows.values())} bad")
    return rows


def _prepare_batch(batch: dict[str, np.ndarray], *, out: str, fmt: PrepareConfig
                   ) -> dict[str, np.ndarray]:
    """Prepare each video of the batch, or keep it when a previous run finished it."""
    status, result = [], []
    for i in range(len(batch["entry"])):
        item = {key: batch[key][i].item() if hasattr(batch[key][i], "item") else batch[key][i]
                for key in batch}
        try:
            entry = _finished(out, item)
            kept = entry is not None
            entry = entry or _prepare_one(out, item, fmt)
            status.append("kept" if kept else "prepared")
            result.append(json.dumps(asdict(entry)))
        except Exception as exc:  # any failure to read a source is a report entry, not a crash
            status.append("bad")
            result.append(failure_reason(exc, str(item["source"])))
    return {"entry": batch["entry"], "status": np.array(status, dtype=object),
            "result": np.array(result, dtype=object)}


def _finished(out: str, item: dict[str, Any]) -> ManifestEntry | None:
    """The entry a previous run wrote for this video, if it is of this source and still whole."""
    try:
        data = (Location.of(out) / item["entry"]).read_json()
        entry = None if data is None else ManifestEntry.from_dict(data)
    except (ValueError, TypeError):   # a damaged entry: prepare the video again
        return None
    if entry is None or entry.source != item["source"]:
        return None
    info = (Location.of(out) / entry.path).info()
    return entry if info.size == entry.size_bytes else None


def _prepare_one(out: str, item: dict[str, Any], fmt: PrepareConfig) -> ManifestEntry:
    with _read_source(item["source"]) as (source, source_sha256, source_bytes):
        video = prepare_video(source, join(out, item["path"]), fmt)
    entry = ManifestEntry(split=item["split"], video_id=item["video_id"], label=int(item["label"]),
                          label_name=item["label_name"], path=item["path"], source=item["source"],
                          source_sha256=source_sha256, source_bytes=source_bytes,
                          sha256=video.sha256, size_bytes=video.size_bytes,
                          num_frames=video.num_frames, fps=video.fps, duration=video.duration,
                          width=video.width, height=video.height)
    (Location.of(out) / item["entry"]).write_json(asdict(entry))
    return entry


@contextmanager
def _read_source(path: str) -> Iterator[tuple[str | IO[bytes], str, int]]:
    """The source video to decode, with its SHA-256 and size, never held whole in memory (a
    source may be any size): a local file is hashed block by block and decoded where it is; an
    object is streamed once into an anonymous local file, hashed on the way, which PyAV then
    seeks in cheaply (seeking in the object itself would cost a request per read)."""
    location = Location.of(path)
    if not location.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_uri(path):
        yield path, file_sha256(path), os.path.getsize(path)
        return
    digest, size = hashlib.sha256(), 0
    with tempfile.TemporaryFile(prefix="aim_prepare_") as local:
        with location.fs.open_input_stream(location.path) as remote:
            while block := remote.read(READ_BLOCK):
                digest.update(block)
                local.write(block)
                size += len(block)
        local.seek(0)
        local.raw.name = path          # decoding errors name the object, not the local copy
        yield local, digest.hexdigest(), size


def _assemble(cfg: Config, splits: dict[str, Split], items: list[dict[str, Any]],
              rows: dict[str, dict[str, Any]], seconds: float
              ) -> tuple[DatasetManifest, dict[str, IngestReport]]:
    """The manifest of the finished videos and, per split, the report of the rest."""
    entries, bad = [], []
    reports = {s: IngestReport(s, "prepare", videos=len(splits[s].records), seconds=seconds,
                               rejected=splits[s].rejected,
                               empty_class_folders=splits[s].empty_class_folders)
               for s in SPLITS}
    for item in items:
        row, report = rows[item["entry"]], reports[item["split"]]
        if row["status"] == "bad":
            report.bad.append((item["source"], row["result"]))
            bad.append({"split": item["split"], "path": item["source"], "reason": row["result"]})
        else:
            entries.append(ManifestEntry.from_dict(json.loads(row["result"])))
            report.good += 1
    class_map: ClassMap = splits["train"].class_map
    manifest = DatasetManifest(class_map.names, cfg.prepare.storage(), entries, bad)
    kept = sum(r["status"] == "kept" for r in rows.values())
    if kept:
        console.say(f"kept {kept} video{'s' if kept > 1 else ''} a previous run prepared")
    return manifest, reports


def _remove_partials(out: str) -> None:
    """Delete what a killed run left half-written (local outputs; object stores have none)."""
    if is_uri(out) or not os.path.isdir(out):
        return
    for folder, _, names in os.walk(out):
        for name in names:
            if name.startswith(".") and (".partial-" in name or name.endswith(".tmp")):
                os.remove(posixpath.join(folder, name))
