"""The clips training and evaluation consume: Ray Data pipelines that decode and augment in CPU
tasks, executed once per epoch for all training workers.

Training hands these datasets to the ``TorchTrainer``; each worker reads its share through
``ray.train.get_dataset_shard`` (a streaming split), so one execution per epoch feeds every worker
and each video is decoded exactly once per epoch, by whichever task gets it. The decode tasks run
the whole train transform (crop, flip where allowed, RandAugment, erasing, resize to the model's
size) and hand over ``uint8 (T, S, S, 3)`` clips; the worker casts and normalises them on its
device (:func:`aim_core.transforms.to_model_input`).

What changes between epochs comes from the epoch clock (:mod:`pipelines.data.epochs`): rank 0
sets the epoch before the epoch's first batch is asked for, and a split's execution starts only
when every worker has asked, so every task of an epoch reads the same number. With it, a video's
temporal sample (stream mode) and its augmentation are functions of ``(data.seed, epoch,
video_id)``, and the order the tasks take the videos in of ``(data.seed, epoch)``: an epoch's clips
are reproducible whatever the number of workers or tasks (:func:`training_clips_per_task` sizes
the tasks); which worker gets a video is not (the split hands blocks out as workers ask).

Rows::

    training    frames: uint8 (T, S, S, 3)   label: int64   video: int64 (its index in the
                scanned list)   decode_ms, augment_ms: float32 (CPU time the task spent on it)
    evaluation  video_id: str   label: int64   view: int32   views: uint8 (crops, T, S, S, 3)

Evaluation rows are one per temporal view (its spatial crops together); evaluation sums the
probabilities of a video's views, wherever they land, before averaging.

Torch and the transforms are imported inside the task functions, not here: every Ray Data split
coordinator imports this module to unpickle the functions its plan names, and would otherwise pay
for torch, torchvision and ``torch._dynamo`` (3.5 s of CPU on a small machine, twice per training
run) to schedule tasks it never runs.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import ray

from aim_core.config import Config, DataConfig
from aim_core.video import (Keyframes, clip_indices, decode_frames, open_video_source,
                            probe_video)

from pipelines.data.scan import blocks, decode_task_resources, failure_reason
from pipelines.data.video_table import VideoTable

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["frames", "label", "video", "decode_ms", "augment_ms"]
EVAL_COLUMNS = ["video_id", "label", "view", "views"]


def decode_views(video: dict[str, Any], data: DataConfig, clip_len: int, train: bool,
                 epoch: int) -> np.ndarray:
    """uint8 ``(V, T, H, W, 3)``: the one training view or the test views of a video, decoded at
    ``data.short_side``. Indices come from ``(seed, epoch, video_id)``, so a clip does not depend
    on which task or batch the video lands in; all views are decoded in one pass."""
    rng = np.random.default_rng(clip_seed(data.seed, epoch, str(video["video_id"])))
    with open_video_source(str(video["path"])) as source:
        n = int(video["num_frames"]) if video.get("num_frames") else probe_video(source).num_frames
        views = clip_indices(data, n, clip_len, train=train, rng=rng)
        frames = decode_frames(source, [i for v in views for i in v], short_side=data.short_side,
                               threads=data.decode_threads, keyframes=_keyframes(video))
    return frames.reshape(len(views), clip_len, *frames.shape[1:])


def _keyframes(video: dict[str, Any]) -> Keyframes | None:
    """The keyframe table the scan recorded, if any (else decode_frames finds it itself)."""
    indices = video.get("keyframe_indices")
    return None if indices is None or not len(indices) else Keyframes(indices,
                                                                        video["keyframe_pts"])


def clip_seed(seed: int, epoch: int, video_id: str) -> list[int]:
    return [seed, epoch, zlib.crc32(video_id.encode())]


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The videos of an epoch in the order the slots take them: a new grouping every epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def training_clips_per_task(cfg: Config, clips: int) -> int:
    """Clips one training decode task makes, one block: as many as fill ``data.train_block_mb``
    (Ray Data's CPU is per block, so its share per clip falls as blocks grow), but no more than an
    eighth of a worker's share of the epoch's ``clips`` where that exceeds
    ``data.videos_per_task``: the split hands whole blocks to whichever worker asks, and a worker
    that ends its epoch early runs stand-in steps until the others end."""
    m = cfg.model
    clip_bytes = m.num_frames * m.image_size * m.image_size * 3
    filling = max(1, cfg.data.train_block_mb * 2 ** 20 // clip_bytes)
    balanced = max(cfg.data.videos_per_task, math.ceil(clips / (8 * cfg.run.num_workers)))
    return int(min(filling, balanced))


def slot_blocks(n: int, per_task: int) -> ray.data.Dataset:
    """Slots ``0..n-1`` (column ``slot``) in blocks of near-equal size, at most ``per_task``
    each, for ``map_batches(batch_size=None)``: each block is taken whole by one task, whose
    output is one block. A batch size that does not divide Ray's own blocks (``ray.data.range``
    makes ``n // k`` rows each) makes it bundle two blocks into each task: half the tasks, each
    twice the size."""
    return ray.data.from_arrow([pa.table({"slot": chunk}) for chunk in
                                np.array_split(np.arange(n), blocks(n, per_task))])


def training_dataset(cfg: Config, videos: list[dict[str, Any]], clock: Any) -> ray.data.Dataset:
    """One augmented clip per readable video, every execution (epoch) a fresh sample."""
    slots = slot_blocks(len(videos), training_clips_per_task(cfg, len(videos)))
    table = VideoTable(videos)   # every task gets it whole: as columns, mapped, not unpickled
    return slots.map_batches(
        _training_clips, batch_size=None, **decode_task_resources(cfg),
        fn_kwargs={"videos": table, "data": cfg.data, "clip_len": cfg.model.num_frames,
                   "image_size": cfg.model.image_size, "clock": clock})


def _training_clips(batch: dict[str, np.ndarray], *, videos: VideoTable,
                    data: DataConfig, clip_len: int, image_size: int, clock: Any
                    ) -> Iterator[dict[str, np.ndarray]]:
    from aim_core.transforms import build_train_transform

    epoch = ray.get(clock.get.remote())
    order = _epoch_order(len(videos), data.seed, epoch)
    transform = build_train_transform(data, image_size)
    picked = [int(order[slot]) for slot in batch["slot"]]
    rows = [(i, augmented_clip(videos[i], data, clip_len, transform, epoch)) for i in picked]
    rows = [(i, r) for i, r in rows if r is not None]
    if rows:  # a generator may yield nothing: no empty batch with a made-up frame shape
        yield {"frames": np.stack([r[0] for _, r in rows]),
               "label": np.array([r[1] for _, r in rows], np.int64),
               "video": np.array([i for i, _ in rows], np.int64),
               "decode_ms": np.array([r[2] for _, r in rows], np.float32),
               "augment_ms": np.array([r[3] for _, r in rows], np.float32)}


def augmented_clip(video: dict[str, Any], data: DataConfig, clip_len: int, transform: Any,
               epoch: int) -> tuple[np.ndarray, int, float, float] | None:
    """``(clip, label, decode CPU ms, augment CPU ms)``, or None for a file that became
    unreadable since the scan (logged, skipped)."""
    import torch

    started = time.process_time()
    try:
        (frames,) = decode_views(video, data, clip_len, train=True, epoch=epoch)
    except Exception as exc:  # one bad file must not cost the others
        log.warning("skipping %s: %s", video["path"], failure_reason(exc, str(video["path"])))
        return None
    decoded = time.process_time()
    torch.manual_seed(np.random.default_rng(clip_seed(data.seed, epoch,
                                                      str(video["video_id"]))).integers(2 ** 62))
    clip = transform(frames).numpy()
    return clip, int(video["label"]), 1e3 * (decoded - started), 1e3 * (time.process_time() -
                                                                          decoded)


def shard_training_dataset(cfg: Config, shards: ray.data.Dataset, clips: int, clock: Any
                           ) -> ray.data.Dataset:
    """Stored clips (parquet mode), augmented afresh every epoch, shards in a new order; a task
    takes as many whole shards (``data.videos_per_task`` clips each) as its block holds."""
    shard = cfg.data.videos_per_task
    return shards.randomize_block_order().map_batches(
        _augmented_shard_rows, batch_size=max(1, training_clips_per_task(cfg, clips) // shard)
        * shard, **decode_task_resources(cfg),
        fn_kwargs={"data": cfg.data, "image_size": cfg.model.image_size, "clock": clock})


def _augmented_shard_rows(batch: dict[str, np.ndarray], *, data: DataConfig, image_size: int,
                          clock: Any) -> dict[str, np.ndarray]:
    import torch
    from aim_core.transforms import build_train_transform

    epoch = ray.get(clock.get.remote())
    transform = build_train_transform(data, image_size)
    clips, times = [], []
    for video_id, frames in zip(batch["video_id"], batch["frames"]):
        started = time.process_time()
        seed = np.random.default_rng(clip_seed(data.seed, epoch, str(video_id))).integers(2 ** 62)
        torch.manual_seed(seed)
        clips.append(transform(np.asarray(frames)).numpy())
        times.append(1e3 * (time.process_time() - started))
    return {"frames": np.stack(clips), "label": batch["label"].astype(np.int64),
            "video": np.full(len(clips), -1, np.int64),
            "decode_ms": np.zeros(len(clips), np.float32),
            "augment_ms": np.array(times, np.float32)}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def evaluation_dataset(cfg: Config, videos: list[dict[str, Any]]) -> ray.data.Dataset:
    """The test views of every readable video, cropped to the model's size in the decode tasks."""
    items = ray.data.from_items(videos, override_num_blocks=blocks(len(videos),
                                                                   cfg.data.videos_per_task))
    return items.map_batches(
        _test_views, batch_size=cfg.data.videos_per_task, **decode_task_resources(cfg),
        fn_kwargs={"data": cfg.data, "clip_len": cfg.model.num_frames,
                   "image_size": cfg.model.image_size})


def _test_views(batch: dict[str, np.ndarray], *, data: DataConfig, clip_len: int,
                image_size: int) -> Iterator[dict[str, np.ndarray]]:
    from aim_core.transforms import build_test_transform

    transform = build_test_transform(data, image_size)
    rows = []
    for i, video_id in enumerate(batch["video_id"]):
        video = {k: batch[k][i] for k in batch}
        try:
            clips = decode_views(video, data, clip_len, train=False, epoch=0)
        except Exception as exc:
            log.warning("skipping %s: %s", video["path"], failure_reason(exc, str(video["path"])))
            continue
        rows += [(str(video_id), int(video["label"]), view, transform(clip).numpy())
                 for view, clip in enumerate(clips)]
    if rows:
        yield _evaluation_rows(rows)


def shard_evaluation_dataset(cfg: Config, shards: ray.data.Dataset) -> ray.data.Dataset:
    """Stored test views (parquet mode), cropped to the model's size in CPU tasks."""
    return shards.map_batches(_cropped_shard_rows, batch_size=cfg.data.videos_per_task,
                              **decode_task_resources(cfg),
                              fn_kwargs={"data": cfg.data, "image_size": cfg.model.image_size})


def _cropped_shard_rows(batch: dict[str, np.ndarray], *, data: DataConfig, image_size: int
                        ) -> dict[str, np.ndarray]:
    from aim_core.transforms import build_test_transform

    transform = build_test_transform(data, image_size)
    return _evaluation_rows([(str(v), int(label), int(view), transform(np.asarray(f)).numpy())
                             for v, label, view, f in zip(batch["video_id"], batch["label"],
                                                          batch["view"], batch["frames"])])


def _evaluation_rows(rows: list[tuple[str, int, int, np.ndarray]]) -> dict[str, np.ndarray]:
    return {"video_id": np.array([r[0] for r in rows], dtype=object),
            "label": np.array([r[1] for r in rows], np.int64),
            "view": np.array([r[2] for r in rows], np.int32),
            "views": np.stack([r[3] for r in rows])}
