"""The clips training and evaluation read, on a real local Ray: decoded and augmented in CPU tasks,
split across two consumers exactly as Ray Train splits them (the ``EveryRowOnce`` data config the
trainer gets), one execution per epoch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import ray

import videotools
from aim_core.config import Config
from pipelines.data import clips
from pipelines.data.epochs import EpochClock
from pipelines.data.scan import read_videos
from pipelines.data.training import EveryRowOnce
from pipelines.data.synthetic import generate_synthetic

pytestmark = pytest.mark.slow  # every test here runs Ray Data jobs

CLASSES = ["blue_circle", "move_left_to_right", "move_right_to_left", "red_square"]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(local_ray):
    yield


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """4 classes x 4 good videos of 32x32 and 16 frames, plus a corrupt file."""
    root = generate_synthetic(tmp_path_factory.mktemp("data"), videos_per_class=4, size=32,
                              frames=16, classes=CLASSES) / "videos"
    (root / "red_square" / "corrupt.mp4").write_bytes(b"\x00" * 3000)
    return root


def make_cfg(root: Path, **data) -> Config:
    return Config.from_dict({
        "data": {"root": str(root), "format": "folder", "short_side": 32, "sampler": "dense",
                 "frame_interval": 2, "videos_per_task": 3, "val_fraction": 0.25,
                 "test_clips": 2, "test_crops": 3, "crop_scale": [0.5, 1.0], **data},
        "model": {"num_frames": 4, "image_size": 24},
        "run": {"ingest_cpus": 0.5},
    })


def two_workers(ds: ray.data.Dataset, clock, epochs) -> dict:
    """Per epoch, what each of two consumers got: ``{video index: clip}``, as Train workers read."""
    splits = [shard["train"] for shard in EveryRowOnce().configure({"train": ds}, 2, None, None)]
    seen: dict[int, list[dict[int, np.ndarray]]] = {}
    for epoch in epochs:
        ray.get(clock.set.remote(epoch))            # rank 0 does this before asking
        got: list[dict[int, np.ndarray]] = [{}, {}]

        def consume(rank: int) -> None:
            for batch in splits[rank].iter_batches(batch_size=2, batch_format="numpy"):
                for video, clip in zip(batch["video"], batch["frames"]):
                    assert int(video) not in got[rank], "a video twice in one worker's epoch"
                    got[rank][int(video)] = clip

        threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        seen[epoch] = got
    return seen


def test_each_readable_video_once_per_epoch_across_two_workers_with_a_new_clip_each_epoch(videos):
    cfg = make_cfg(videos)
    scanned, _, report = read_videos(cfg, "train")
    assert [Path(p).name for p, _ in report.bad] == ["corrupt.mp4"]
    scanned = scanned[:-1]     # an odd number: Ray Train's default split would drop one an epoch
    assert len(scanned) % 2 == 1
    clock = EpochClock.remote()
    seen = two_workers(clips.training_dataset(cfg, scanned, clock), clock, epochs=(1, 2))
    seen["again"] = two_workers(clips.training_dataset(cfg, scanned, clock), clock,
                                epochs=(1,))[1]

    for epoch, (first, second) in [(1, seen[1]), (2, seen[2])]:
        assert not first.keys() & second.keys()
        assert sorted(first.keys() | second.keys()) == list(range(len(scanned)))
    one = {**seen[1][0], **seen[1][1]}
    two = {**seen[2][0], **seen[2][1]}
    assert {v.shape for v in one.values()} == {(4, 24, 24, 3)}         # at the model's size
    assert all(v.dtype == np.uint8 for v in one.values())
    changed = sum(not np.array_equal(one[k], two[k]) for k in one)
    assert changed == len(one)                                         # fresh every epoch
    # The same epoch again (a restarted run) gives the same clips, whichever worker gets them.
    again = {**seen["again"][0], **seen["again"][1]}
    assert all(np.array_equal(one[k], again[k]) for k in one)


def test_a_training_decode_task_makes_one_block_and_the_blocks_are_near_equal(videos):
    """11 videos at 3 a task: 4 tasks of 3, 3, 3 and 2 clips (``ray.data.range``'s blocks of
    11 // 4 = 2 rows, bundled up to a batch of 3, made tasks and blocks of 4, 4 and 3)."""
    cfg = make_cfg(videos)
    scanned = read_videos(cfg, "train")[0][:11]
    clock = EpochClock.remote()
    ray.get(clock.set.remote(1))
    ds = clips.training_dataset(cfg, scanned, clock)
    blocks = [len(b["video"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert sorted(blocks) == [2, 3, 3, 3]


def still_video(path: Path) -> Path:
    """16 identical frames with a white block at the top left: flicker or a flip would show."""
    frame = np.full((32, 32, 3), 90, np.uint8)
    frame[:10, :10] = 255
    # Lossless (qp=0): every frame decodes to the very same pixels, as the test needs.
    return videotools.write_video(path, np.repeat(frame[None], 16, axis=0), gop=4,
                                  x264_params="qp=0")


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_in_the_decode_tasks_is_one_draw_per_clip_and_honours_no_flip(
        tmp_path, flip):
    root = tmp_path / "still"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(6):
            still_video(root / cls / f"{cls}{k}.mp4")
    cfg = make_cfg(root, horizontal_flip=flip, crop_scale=[1.0, 1.0], random_erasing=0.5,
                   val_fraction=0.2)
    scanned, _, _ = read_videos(cfg, "train")
    clock = EpochClock.remote()
    ds = clips.training_dataset(cfg, scanned, clock)
    flipped = 0
    for epoch in (1, 2, 3):
        ray.get(clock.set.remote(epoch))
        for batch in ds.iter_batches(batch_size=4, batch_format="numpy"):
            for clip in batch["frames"]:
                assert all(np.array_equal(frame, clip[0]) for frame in clip)  # one draw per clip
                left, right = clip[0][:5, :5].mean(), clip[0][:5, -5:].mean()
                flipped += bool(right > left + 40)
    assert (flipped > 0) == flip


def test_evaluation_rows_hold_every_test_view_cropped_to_the_model_size(videos):
    cfg = make_cfg(videos)
    scanned, _, _ = read_videos(cfg, "val")
    rows = clips.evaluation_dataset(cfg, scanned).take_all()
    assert sorted((r["video_id"], r["view"]) for r in rows) == sorted(
        (v["video_id"], view) for v in scanned for view in range(2))
    assert {r["views"].shape for r in rows} == {(3, 4, 24, 24, 3)}     # 3 crops of 4 frames
