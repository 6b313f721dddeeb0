"""How many clips a training decode task makes: Ray Data's CPU is paid per block, so a block is
filled to ``data.train_block_mb``, yet the workers' shares of an epoch stay many blocks each."""

from __future__ import annotations

from aim_core.config import Config
from pipelines.data.clips import training_clips_per_task


def recipe(frames: int = 8, size: int = 224, workers: int = 8, **data) -> Config:
    return Config.from_dict({"model": {"num_frames": frames, "image_size": size},
                             "run": {"num_workers": workers}, "data": data})


def test_a_task_fills_a_block_of_the_configured_size_with_model_sized_clips():
    clip_mib = 8 * 224 * 224 * 3 / 2 ** 20                                  # 1.15 MiB
    assert training_clips_per_task(recipe(), 240_000) == int(80 // clip_mib) == 69
    assert training_clips_per_task(recipe(frames=32), 240_000) == 17         # 4x the bytes
    assert training_clips_per_task(recipe(train_block_mb=40), 240_000) == 34
    assert training_clips_per_task(recipe(frames=32, size=336, train_block_mb=1), 240_000) == 1


def test_a_task_holds_at_most_an_eighth_of_a_workers_share_but_no_fewer_than_the_floor():
    assert training_clips_per_task(recipe(workers=2), 1000) == 63            # ceil(1000 / 16)
    assert training_clips_per_task(recipe(workers=8), 8 * 8 * 69) == 69
    # small epochs: data.videos_per_task, as scan and evaluation tasks
    assert training_clips_per_task(recipe(workers=2), 100) == 16
    assert training_clips_per_task(recipe(workers=4, videos_per_task=4), 3) == 4
