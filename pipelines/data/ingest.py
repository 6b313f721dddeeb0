"""``aim-video ingest``: scan (stream mode) or store as Parquet shards (parquet mode) both splits,
with bad files skipped and reported.

Why not ``ray.data.read_videos``: it needs decord and yields one row per decoded frame. Instead the
file list comes from :mod:`aim_core.annotations` (local, ``s3://``, ``gs://``), becomes a dataset
of file names, and PyAV decodes only the sampled frames in CPU-only tasks, several videos per task
(``data.videos_per_task``, ``run.ingest_cpus``, no GPUs): see :mod:`pipelines.data.scan`,
:mod:`pipelines.data.clips` and :mod:`pipelines.data.shards`.
"""

from __future__ import annotations

from aim_core.annotations import AnnotationError, ClassMap
from aim_core.config import Config
from aim_core.storage import Location, join

from pipelines import console
from pipelines.data.scan import REPORT_FILE, IngestReport, read_videos
from pipelines.data.shards import (CLASS_MAP_FILE, default_output_dir, load_class_map,
                                   materialize, read_report)


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
            _, class_map, reports[split] = read_videos(cfg, split, class_map)
            class_map.save(join(out, CLASS_MAP_FILE))
        console.say(reports[split].summary())
    (Location.of(out) / REPORT_FILE).write_json({k: r.to_dict() for k, r in reports.items()})
    if not any(r.good for r in reports.values()):
        tried = sum(r.videos for r in reports.values())
        raise AnnotationError(f"data.root: no readable videos under {cfg.data.root} ({tried} "
                              f"tried; see {join(out, REPORT_FILE)})")
    return reports
