"""Ray Data ingest on real (synthetic) MP4s: bad files reported, clips exact, shards resumable."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from aim_core.annotations import AnnotationError, ClassMap, load_split
from aim_core.config import Config
from aim_core.video import clip_indices, decode_frames
from pipelines.data import ingest, shards
from pipelines.data.scan import read_videos
from pipelines.data.synthetic import generate_synthetic

pytestmark = pytest.mark.slow  # every test here runs Ray Data jobs

CLASSES = ["blue_circle", "move_left_to_right", "move_right_to_left", "red_square"]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(local_ray):
    yield


def write_audio_only(path: Path) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000, layout="mono")
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """4 classes x 4 good videos, plus one bad file of each kind; returns root and bad kinds."""
    root = generate_synthetic(tmp_path_factory.mktemp("data"), videos_per_class=4, size=32,
                              frames=16, classes=CLASSES) / "videos"
    good = (root / "red_square" / "red_square_0000.mp4").read_bytes()
    bad = {
        "red_square/corrupt.mp4": os.urandom(4000),
        "red_square/empty.mp4": b"",
        "blue_circle/truncated.mp4": good[: len(good) // 2],
        "move_left_to_right/header_only.mp4": good[:200],
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    write_audio_only(root / "blue_circle" / "audio_only.mp4")
    bad["blue_circle/audio_only.mp4"] = b""
    return root, {str(root / rel): rel for rel in bad}


def make_cfg(root: Path | str, **data) -> Config:
    return Config.from_dict({
        "data": {"root": str(root), "format": "folder", "short_side": 32, "frame_interval": 2,
                 "videos_per_task": 3, "val_fraction": 0.25, "test_clips": 3, **data},
        "model": {"num_frames": 4},
        "run": {"ingest_cpus": 1},
    })


def expected_good(cfg: Config, split: str, bad: dict[str, str]) -> set[str]:
    return {r.video_id for r in load_split(cfg.data, split).records if r.path not in bad}


def test_a_scan_finds_every_good_video_and_reports_exactly_the_bad_files(videos):
    root, bad = videos
    cfg = make_cfg(root)
    reported: dict[str, str] = {}
    for split in ("train", "val"):
        found, _, report = read_videos(cfg, split)
        assert sorted(v["video_id"] for v in found) == sorted(expected_good(cfg, split, bad))
        assert all(v["num_frames"] == 16 and v["keyframe_indices"][0] == 0 for v in found)
        assert report.good == len(found) and report.clips is None
        reported.update(report.bad)
    assert set(reported) == set(bad)
    assert all(reason for reason in reported.values())
    assert "empty" in reported[str(root / "red_square" / "empty.mp4")]
    assert "no video stream" in reported[str(root / "blue_circle" / "audio_only.mp4")]


def test_parquet_round_trip_gives_the_decoded_clips_and_labels(videos, tmp_path):
    root, bad = videos
    cfg = make_cfg(root, mode="parquet")

    folder = shards.materialize(cfg, "val", str(tmp_path))
    rows = shards.read_shards(folder).take_all()

    records = {r.video_id: r for r in load_split(cfg.data, "val").records if r.path not in bad}
    assert sorted({r["video_id"] for r in rows}) == sorted(records)
    assert len(rows) == 3 * len(records)
    for row in rows:
        record = records[row["video_id"]]
        n = len(decode_frames(record.path, range(16)))
        views = clip_indices(cfg.data, n, 4, train=False)
        assert row["label"] == record.label and row["path"] == record.path
        assert np.array_equal(row["frames"], decode_frames(record.path, views[row["view"]],
                                                           short_side=32))
    assert (tmp_path / "class_map.json").is_file()
    report = json.loads((tmp_path / "val" / "ingest_report.json").read_text())
    assert {b["path"] for b in report["bad"]} == {p for p in bad if p in
                                                  {r.path for r in load_split(cfg.data, "val").records}}


def test_parquet_rerun_skips_finished_shards_and_redoes_missing_ones(videos, tmp_path):
    root, _ = videos
    cfg = make_cfg(root, mode="parquet")
    folder = Path(shards.materialize(cfg, "train", str(tmp_path)))
    files = sorted(folder.glob("shard-*.parquet"))
    assert len(files) == 5                                     # ceil(15 videos / 3 per task)
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    shards.materialize(cfg, "train", str(tmp_path))             # nothing to do
    files[2].unlink()                                          # as if interrupted mid-shard
    (folder / f".{files[2].name}.abc.tmp").write_bytes(b"partial")
    shards.materialize(cfg, "train", str(tmp_path))

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["runs"] == [{"written": 5, "skipped": 0}, {"written": 0, "skipped": 5},
                                {"written": 1, "skipped": 4}]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p != files[2])
    assert manifest["clips"] == len(shards.read_shards(str(folder)).take_all())

    # Different clip settings plan different shards: nothing stale is reused, and once the new
    # manifest is in place the old shards (and the leftover temporary file) are gone.
    shards.materialize(make_cfg(root, mode="parquet", frame_interval=3), "train", str(tmp_path))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["runs"][-1] == {"written": 5, "skipped": 0}
    assert sorted(p.name for p in folder.iterdir() if "shard" in p.name) == sorted(
        s["file"] for s in manifest["shards"])


def clips_by_view(folder: str | Path) -> dict[tuple[str, int], np.ndarray]:
    return {(r["video_id"], r["view"]): r["frames"]
            for r in shards.read_shards(str(folder)).take_all()}


def test_a_shard_an_interrupted_rewrite_left_behind_is_never_reused(videos, tmp_path):
    """A run with new clip settings that died between a shard's two writes left the old clips
    where the new shard belongs; the next run must see that and rewrite the shard."""
    root, _ = videos
    old, new = make_cfg(root, mode="parquet"), make_cfg(root, mode="parquet", frame_interval=3)
    folder = Path(shards.materialize(old, "train", str(tmp_path / "data")))
    old_first = sorted(folder.glob("shard-*.parquet"))[0].read_bytes()
    shards.materialize(new, "train", str(tmp_path / "data"))
    sorted(folder.glob("shard-*.parquet"))[0].write_bytes(old_first)

    shards.materialize(new, "train", str(tmp_path / "data"))

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["runs"][-1] == {"written": 1, "skipped": 4}
    clean = clips_by_view(shards.materialize(new, "train", str(tmp_path / "clean")))
    resumed = clips_by_view(folder)
    assert resumed.keys() == clean.keys()
    assert all(np.array_equal(resumed[k], clean[k]) for k in clean)


def test_a_truncated_manifest_is_rebuilt_from_the_shards(videos, tmp_path):
    root, _ = videos
    cfg = make_cfg(root, mode="parquet")
    folder = Path(shards.materialize(cfg, "val", str(tmp_path)))
    clips = len(shards.read_shards(str(folder)).take_all())
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])   # as a crash mid-write left it

    with pytest.raises(FileNotFoundError, match=r"manifest\.json.*unreadable.*aim-video ingest"):
        shards.read_shards(str(folder))
    shards.materialize(cfg, "val", str(tmp_path))

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["runs"] == [{"written": 0, "skipped": len(manifest["shards"])}]
    assert manifest["clips"] == clips == len(shards.read_shards(str(folder)).take_all())


def corrupt_copy(root: Path, dst: Path) -> Path:
    """The same class folders and file names as ``root``, every file unreadable."""
    for video in root.rglob("*.mp4"):
        target = dst / video.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(os.urandom(3000))
    return dst


def test_reingesting_an_empty_or_unreadable_root_keeps_the_data_set(videos, tmp_path):
    root, _ = videos
    out = tmp_path / "data"
    ingest.run_ingest(make_cfg(root, mode="parquet"), str(out))
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    clips = clips_by_view(out / "train")
    (tmp_path / "empty").mkdir()

    empty = re.escape(str(tmp_path / "empty"))
    with pytest.raises(AnnotationError, match=f"data.root: {empty} has no videos"):
        ingest.run_ingest(make_cfg(tmp_path / "empty", mode="parquet"), str(out))
    unreadable = corrupt_copy(root, tmp_path / "unreadable")
    with pytest.raises(AnnotationError, match=rf"not replacing .*manifest\.json, which lists "
                                              rf"{len(clips)} clips.*{re.escape(str(unreadable))}"):
        ingest.run_ingest(make_cfg(unreadable, mode="parquet"), str(out))

    assert all(p.read_bytes() == data for p, data in kept.items())
    assert clips_by_view(out / "train").keys() == clips.keys()


def test_a_run_that_reads_no_video_fails_naming_the_root(videos, tmp_path):
    unreadable = corrupt_copy(videos[0], tmp_path / "unreadable")
    with pytest.raises(AnnotationError,
                       match=f"data.root: no readable videos under {re.escape(str(unreadable))}"):
        ingest.run_ingest(make_cfg(unreadable, mode="parquet"), str(tmp_path / "data"))
    report = json.loads((tmp_path / "data" / "ingest_report.json").read_text())
    bad = report["train"]["bad"] + report["val"]["bad"]
    assert len(bad) == len(list(unreadable.rglob("*.mp4")))


def test_empty_class_folders_the_class_map_allows_are_in_the_report(videos, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(videos[0], root)
    (root / "waving").mkdir()
    out = tmp_path / "data"
    ClassMap(CLASSES + ["waving"]).save(str(out / "class_map.json"))

    reports = ingest.run_ingest(make_cfg(root, mode="parquet"), str(out))

    assert reports["val"].empty_class_folders == [str(root / "waving")]
    saved = json.loads((out / "ingest_report.json").read_text())
    assert saved["train"]["empty_class_folders"] == [str(root / "waving")]
    assert "1 empty class folder" in reports["train"].summary()


def test_videos_and_shards_behind_uris_give_the_same_clips_as_local_paths(videos, tmp_path):
    """s3:// and gs:// take this path (pyarrow filesystems, seekable files for PyAV); file:// URIs
    exercise it without a network."""
    root, bad = videos
    local = shards.read_shards(shards.materialize(make_cfg(root, mode="parquet"), "val",
                                                  str(tmp_path / "local"))).take_all()
    folder = shards.materialize(make_cfg(root.as_uri(), mode="parquet"), "val",
                                (tmp_path / "remote").as_uri())
    remote = shards.read_shards(folder).take_all()

    assert folder == (tmp_path / "remote" / "val").as_uri()
    key = lambda r: (r["video_id"], r["view"])
    assert sorted(map(key, remote)) == sorted(map(key, local))
    by_key = {key(r): r for r in local}
    for row in remote:
        assert row["path"].startswith("file://")
        assert np.array_equal(row["frames"], by_key[key(row)]["frames"])
    report = shards.read_report(folder)
    assert report.bad and all(path.startswith("file://") for path, _ in report.bad)
    assert {path.removeprefix("file://") for path, _ in report.bad} <= set(bad)


def test_run_ingest_writes_class_map_and_a_report_for_both_splits(videos, tmp_path, capsys):
    root, bad = videos
    reports = ingest.run_ingest(make_cfg(root, mode="parquet", train_fraction=0.5), str(tmp_path))

    assert set(reports) == {"train", "val"}
    saved = json.loads((tmp_path / "ingest_report.json").read_text())
    assert {b["path"] for s in saved.values() for b in s["bad"]} <= set(bad)
    assert json.loads((tmp_path / "class_map.json").read_text())["classes"] == CLASSES
    assert "[ingest train/parquet]" in capsys.readouterr().out
    # train_fraction 0.5 keeps half of each class (2 of the 3 or 4 training files per class)
    assert reports["train"].videos < len(load_split(make_cfg(root).data, "train").records)


def test_videos_of_different_aspect_ratios_make_a_variable_shaped_column(tmp_path):
    wide = generate_synthetic(tmp_path / "wide", videos_per_class=2, size=(48, 32), frames=8,
                              classes=["grow"]) / "videos"
    square = generate_synthetic(tmp_path / "square", videos_per_class=2, size=32, frames=8,
                                classes=["shrink"]) / "videos"
    root = tmp_path / "mixed"
    shutil.copytree(wide, root)
    shutil.copytree(square, root, dirs_exist_ok=True)
    cfg = make_cfg(root, mode="parquet", val_fraction=0.5)

    rows = shards.read_shards(shards.materialize(cfg, "train", str(tmp_path / "out"))).take_all()

    assert {r["frames"].shape for r in rows} == {(4, 32, 48, 3), (4, 32, 32, 3)}
