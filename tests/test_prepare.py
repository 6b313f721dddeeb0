"""`aim-video prepare` on a real Ray cluster and real MP4s: every good video converted once, bad
files reported, a re-run or an interrupted run redoing nothing finished, the same manifest digest
every time, and a training run on the prepared set recording that digest in MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from aim_core.config import Config, ConfigError
from aim_core.manifest import MANIFEST_FILE, DatasetManifest
from aim_core.video import probe_video
from pipelines.data.prepare import REPORT_FILE, SETTINGS_FILE, run_prepare
from pipelines.data.scan import read_videos
from pipelines.data.synthetic import generate_synthetic
from pipelines.train.driver import run_training

from clusters import tiny_assets, training_config

pytestmark = pytest.mark.slow  # every test here runs Ray Data jobs

RAW_CLASSES = ("blue_circle", "move_left_to_right", "red_square")
BAD = {"red_square/corrupt.mp4": os.urandom(3000), "blue_circle/empty.mp4": b""}


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(local_ray):
    yield


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """3 classes x 8 good videos (48 frames of 64x48 at 8 fps) and two bad files."""
    root = generate_synthetic(tmp_path_factory.mktemp("raw"), videos_per_class=8, size=(64, 48),
                              frames=48, classes=RAW_CLASSES) / "videos"
    for rel, data in BAD.items():
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def config(root: Path, out: Path, **prepare) -> Config:
    return Config().with_overrides({
        "data.root": str(root), "data.val_fraction": 0.25, "data.videos_per_task": 4,
        "prepare.output": str(out), "prepare.short_side": 32, "prepare.fps": 8, **{
            f"prepare.{k}": v for k, v in prepare.items()}})


def finished(out: Path) -> dict[str, int]:
    """Prepared files that have their entry, by path, with their modification time."""
    entries = [json.loads(p.read_text()) for p in (out / "entries").rglob("*.json")]
    return {e["path"]: (out / e["path"]).stat().st_mtime_ns for e in entries}


def test_every_good_video_is_prepared_once_into_a_manifest_and_bad_files_are_reported(
        raw: Path, tmp_path: Path):
    manifest = run_prepare(config(raw, tmp_path / "prepared"))
    out = tmp_path / "prepared"

    sizes = manifest.split_sizes()
    assert sizes["train"] + sizes["val"] == 24 and sizes["val"] >= 4
    assert {s: sum(c.values()) for s, c in manifest.class_counts().items()} == sizes
    entry = manifest.entries[0]
    prepared = probe_video(str(out / entry.path))
    assert (prepared.num_frames, prepared.fps, prepared.width, prepared.height) == \
        (entry.num_frames, 8.0, 42, 32) == (48, 8.0, entry.width, entry.height)
    assert (entry.source_bytes, entry.size_bytes) == (os.path.getsize(entry.source),
                                                      (out / entry.path).stat().st_size)
    assert len(entry.source_sha256) == 64 and entry.duration == entry.num_frames / 8
    assert sorted(b["path"] for b in manifest.bad) == sorted(str(raw / rel) for rel in BAD)
    report = json.loads((out / REPORT_FILE).read_text())
    assert sorted(b["path"] for s in report.values() for b in s["bad"]) == \
        sorted(str(raw / rel) for rel in BAD)
    assert DatasetManifest.load(str(out)).digest() == manifest.digest()


def test_sources_behind_a_uri_are_streamed_hashed_and_converted_like_local_ones(
        raw: Path, tmp_path: Path):
    """``file://`` goes through pyarrow's filesystem API, as ``s3://`` or ``gs://`` would."""
    local = run_prepare(config(raw, tmp_path / "local"))
    remote = run_prepare(config(f"file://{raw}", tmp_path / "remote"))

    by_id = {e.video_id: e for e in local.entries}
    assert sorted(e.video_id for e in remote.entries) == sorted(by_id)
    for entry in remote.entries:
        twin = by_id[entry.video_id]
        assert entry.source.startswith("file://") and entry.source.endswith(twin.source)
        assert (entry.source_sha256, entry.source_bytes) == (
            hashlib.sha256(Path(twin.source).read_bytes()).hexdigest(),
            os.path.getsize(twin.source))
        assert entry.sha256 == twin.sha256          # the same prepared file, byte for byte
    # Bad objects are reported under their URIs, for reasons that name no local copy.
    assert sorted(b["path"] for b in remote.bad) == sorted(f"file://{raw / rel}" for rel in BAD)
    assert not any("aim_prepare_" in b["reason"] or str(tmp_path) in b["reason"]
                   for b in remote.bad)


def test_a_rerun_redoes_nothing_and_another_output_gets_the_same_digest(raw: Path, tmp_path: Path):
    first = run_prepare(config(raw, tmp_path / "a"))
    before = finished(tmp_path / "a")
    again = run_prepare(config(raw, tmp_path / "a"))
    elsewhere = run_prepare(config(raw, tmp_path / "b"))

    assert finished(tmp_path / "a") == before           # not one file written again
    assert again.digest() == first.digest() == elsewhere.digest()


def test_an_interrupted_prepare_resumes_without_redoing_finished_videos(raw: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    cfg = config(raw, out, **SLOW)   # so that the interrupt lands with most videos still to do
    interrupt = threading.Thread(target=_interrupt_after_first_entry, args=(out,), daemon=True)
    interrupt.start()
    # Ctrl-C as in a fresh `aim-video prepare` process, whatever handler an earlier test left
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_prepare(cfg)
    finally:
        signal.signal(signal.SIGINT, previous)
    done = _settled(out)
    assert 0 < len(done) < 24 and not (out / MANIFEST_FILE).exists()
    leftover = out / "videos" / "train" / RAW_CLASSES[0] / ".x.mp4.partial-99999"
    leftover.write_bytes(b"half a video")

    manifest = run_prepare(cfg)

    now = finished(out)
    assert {path: now[path] for path in done} == done   # finished videos were kept as they were
    assert len(now) == len(manifest.entries) == 24 and not leftover.exists()
    assert manifest.digest() == run_prepare(config(raw, tmp_path / "fresh", **SLOW)).digest()


# x264's slowest preset: tiny videos otherwise convert faster than a signal reaches the driver
SLOW = {"preset": "veryslow"}


def _interrupt_after_first_entry(out: Path) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "entries").rglob("*.json")):
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)


def _settled(out: Path) -> dict[str, int]:
    """What the interrupted run finished, once its last tasks have stopped writing."""
    done, stable_since = finished(out), time.time()
    while time.time() - stable_since < 3:
        time.sleep(0.2)
        now = finished(out)
        if now != done:
            done, stable_since = now, time.time()
    return done


def test_an_output_that_holds_other_files_or_settings_is_refused_untouched(raw: Path,
                                                                           tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"^prepare\.output: .* is not a prepared set"):
        run_prepare(config(raw, foreign))
    assert os.listdir(foreign) == ["notes.txt"]

    run_prepare(config(raw, tmp_path / "prepared"))
    settings = (tmp_path / "prepared" / SETTINGS_FILE).read_text()
    with pytest.raises(ConfigError, match=r"^prepare\.gop: 4 here, 2 there"):
        run_prepare(config(raw, tmp_path / "prepared", gop=4))
    assert (tmp_path / "prepared" / SETTINGS_FILE).read_text() == settings
    with pytest.raises(ConfigError, match=r"^prepare\.output: .* is inside data\.root"):
        run_prepare(config(raw, raw / "prepared"))


def test_training_on_a_prepared_set_records_its_manifest_digest_in_mlflow(tmp_path_factory,
                                                                          tmp_path: Path,
                                                                          isolated_mlflow):
    assets = tiny_assets(tmp_path_factory)
    raw_set = training_config(tmp_path, assets, name="unused", epochs=2)
    prepared = tmp_path / "prepared"
    manifest = run_prepare(Config.from_dict(raw_set).with_overrides({
        "prepare.output": str(prepared), "prepare.short_side": 32, "prepare.fps": 8}))
    cfg = Config.from_dict(training_config(tmp_path, assets, name="on-prepared", epochs=2, run={
        "system_metrics_s": 0.5})).with_overrides({"data.format": "prepared",
                                                   "data.root": str(prepared)})
    videos, _, report = read_videos(cfg, "val")
    assert len(videos) == manifest.split_sizes()["val"] and not report.bad

    outcome = run_training(cfg)

    client = MlflowClient(cfg.run.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)
    inputs = {{t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
              for i in run.inputs.dataset_inputs}
    assert inputs["training"].digest == manifest.digest() == run.data.tags["dataset_digest"]
    assert inputs["validation"].digest == manifest.digest("val")
    assert json.loads(inputs["training"].profile)["val_videos"] == manifest.split_sizes()["val"]
    assert outcome.evaluation["num_videos"] == manifest.split_sizes()["val"]
    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
