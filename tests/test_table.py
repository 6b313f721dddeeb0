"""The training videos as columns: every row comes back as it went in, and a task maps the table
from the object store instead of unpickling it, so its cost per task does not grow with the data
set (a list of dicts with keyframe tables costs seconds per task at Kinetics scale)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines.data.table import VideoTable


def videos(n: int) -> list[dict]:
    return [{"video_id": f"clåss_{i % 7}/v{i}", "path": f"/data/clåss_{i % 7}/v{i}.mp4",
             "label": i % 7, "num_frames": 300 + i,
             "keyframe_indices": list(range(0, 300, 2 + i % 3)),
             "keyframe_pts": list(range(0, 300 * 512, 512 * (2 + i % 3)))} for i in range(n)]


def test_every_row_comes_back_with_its_values() -> None:
    rows = videos(50) + [{**videos(1)[0], "keyframe_indices": [], "keyframe_pts": []}]
    table = VideoTable(rows)
    assert len(table) == 51
    for i, row in enumerate(rows):
        got = table[i]
        assert list(got) == list(row)
        assert {k: v for k, v in got.items() if not k.startswith("keyframe")} == {
            k: v for k, v in row.items() if not k.startswith("keyframe")}
        assert got["keyframe_indices"].tolist() == row["keyframe_indices"]
        assert got["keyframe_pts"].tolist() == row["keyframe_pts"]
    assert table[-1]["keyframe_indices"].tolist() == [] and table[-51]["label"] == 0
    with pytest.raises(IndexError, match="51 videos"):
        table[51]


def in_band_bytes(table: VideoTable) -> int:
    """What a task unpickles: the pickle less the buffers Ray keeps out of band and maps."""
    buffers: list = []
    return len(pickle.dumps(table, protocol=5, buffer_callback=buffers.append))


def test_a_task_maps_the_table_so_its_cost_does_not_grow_with_the_videos() -> None:
    small, large = VideoTable(videos(10)), VideoTable(videos(10_000))
    assert max(in_band_bytes(small), in_band_bytes(large)) < 1000   # shapes and lengths only
    assert len(pickle.dumps(videos(10_000), protocol=5)) > 500 * in_band_bytes(large)


def test_rows_of_other_keys_or_values_are_refused_naming_the_column() -> None:
    with pytest.raises(ValueError, match="every row needs the keys"):
        VideoTable([{"path": "a"}, {"path": "b", "label": 1}])
    with pytest.raises(ValueError, match="column 'label'"):
        VideoTable([{"label": None}, {"label": 1}])


def test_an_empty_table_has_no_rows() -> None:
    assert len(VideoTable([])) == 0 and list(VideoTable([])) == []
    assert np.asarray(VideoTable(videos(3))[0]["keyframe_pts"]).dtype == np.int64
