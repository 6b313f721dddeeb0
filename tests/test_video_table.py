"""The training videos as columns: every row comes back as it went in, and a task maps the table
from the object store instead of unpickling it, so its cost per task does not grow with the data
set (a list of dicts with keyframe tables costs seconds per task at Kinetics scale)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipelines.data.video_table import VideoTable


def videos(n: int) -> list[dict]:
    return [{"video_id": f"clåss_{i % 7}/v{i}", "path": f"/data/clåss_{i % 7}/v{i}.mp4",
             "label": i % 7, "num_frames": 300 + i,
             "keyframe_indices": list(range(0, 300, 2 + i % 3)),
             "keyframe_pts": list(range(0, 300 * 512, 512 * (2 + i % 3)))} for i in range(n)]


def test_every_row_comes_back_with_its_values() -> None:
    rows = videos(50) + [{**videos(1)[0], "keyframe_indices": [], "keyframe_pts": [],
                          "path": "/data/caf\udce9.mp4"}]   # a file name that is not UTF-8
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
    with pytest.raises(ValueError, match="column 'label'"):
        VideoTable([{"label": [1]}, {"label": 1}])
    with pytest.raises(ValueError, match="column 'keyframe_pts'.*integers"):
        VideoTable([{"keyframe_pts": [0.5, 1.5]}])


def test_rows_as_ray_data_gives_them_numpy_scalars_and_arrays_come_back_alike() -> None:
    rows = [{"video_id": np.str_("a/1"), "label": np.int64(3), "num_frames": np.int32(30),
             "keyframe_indices": np.array([0, 10], np.int32), "keyframe_pts": (0, 5120)}]
    row = VideoTable(rows)[0]
    assert row["video_id"] == "a/1" and row["label"] == 3 and row["num_frames"] == 30
    assert row["keyframe_indices"].dtype == np.int64 and row["keyframe_pts"].tolist() == [0, 5120]


def test_an_empty_table_has_no_rows() -> None:
    assert len(VideoTable([])) == 0 and list(VideoTable([])) == []
