"""The embedded demo data set: real MP4s, deterministic, temporal pairs with identical frame sets."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from aim_core.annotations import ClassMap, load_split
from aim_core.config import DataConfig
from pipelines.data.synthetic import (CLASSES, DEFAULT_CLASSES, generate_synthetic, render_video,
                                      write_mp4)
from videotools import HAS_LIBC, fill_freed_heap_with


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def frame_set(video: np.ndarray) -> list[str]:
    return sorted(hashlib.sha1(frame.tobytes()).hexdigest() for frame in video)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("demo"), videos_per_class=3, size=(48, 32),
                              frames=12, fps=8, seed=5)


def test_files_are_h264_mp4_with_the_requested_frames_and_size(demo):
    files = sorted((demo / "videos").glob("*/*.mp4"))
    assert len(files) == 3 * len(DEFAULT_CLASSES)
    with av.open(str(files[0])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
    for path in files:
        assert decode(path).shape == (12, 32, 48, 3)


def test_layout_serves_the_folder_and_list_formats(demo):
    class_map = ClassMap.load(str(demo / "class_map.json"))
    assert class_map.names == list(DEFAULT_CLASSES)
    assert class_map.metadata["temporal_order"] == {
        "red_square": False, "blue_circle": False, "move_left_to_right": True,
        "move_right_to_left": True, "move_top_to_bottom": True, "move_bottom_to_top": True}
    assert class_map.metadata["reverse_of"]["move_right_to_left"] == "move_left_to_right"

    as_list = DataConfig(root=str(demo / "videos"), format="list",
                         train_annotations=str(demo / "train.txt"),
                         val_annotations=str(demo / "val.txt"), labels_file=str(demo / "labels.txt"))
    as_folder = DataConfig(root=str(demo / "videos"), format="folder", seed=5)  # the synth seed
    for split in ("train", "val"):
        listed, folder = load_split(as_list, split), load_split(as_folder, split)
        assert listed.class_map == folder.class_map == class_map
        # the list files hold the split the folder format computes with the generator's seed
        assert [(r.path, r.label) for r in listed.records] == [(r.path, r.label) for r in folder.records]
    total = sum(len(load_split(as_list, s).records) for s in ("train", "val"))
    assert total == 3 * len(DEFAULT_CLASSES)


def test_same_seed_same_bytes_other_seed_other_videos(tmp_path):
    kwargs = dict(videos_per_class=2, size=32, frames=8, classes=["red_square", "grow"])
    a = generate_synthetic(tmp_path / "a", seed=1, **kwargs)
    b = generate_synthetic(tmp_path / "b", seed=1, **kwargs)
    c = generate_synthetic(tmp_path / "c", seed=2, **kwargs)
    for rel in ("red_square/red_square_0001.mp4", "grow/grow_0000.mp4"):
        assert (a / "videos" / rel).read_bytes() == (b / "videos" / rel).read_bytes()
        assert not np.array_equal(decode(a / "videos" / rel), decode(c / "videos" / rel))


@pytest.mark.skipif(not HAS_LIBC, reason="needs the C library's malloc")
def test_the_bytes_depend_only_on_the_frames_not_on_what_the_heap_held(tmp_path):
    """x264's macroblock tree reads uninitialised memory on small frames: with it on, this fails."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (32 + 48, 32 + 48, 3), dtype=np.uint8)
    video = np.stack([texture[t:t + 32, t:t + 32] for t in range(48)])
    write_mp4(tmp_path / "first.mp4", video, 8)
    fill_freed_heap_with(0xFF)   # NaN, read as floats
    write_mp4(tmp_path / "second.mp4", video, 8)
    assert (tmp_path / "first.mp4").read_bytes() == (tmp_path / "second.mp4").read_bytes()


@pytest.mark.parametrize("forward,backward", [
    ("move_left_to_right", "move_right_to_left"),
    ("move_top_to_bottom", "move_bottom_to_top"),
    ("grow", "shrink")])
def test_temporal_pair_has_identical_frame_sets_and_differs_only_in_order(forward, backward):
    a = render_video(forward, 4, 0, (32, 32), 16)
    b = render_video(backward, 4, 0, (32, 32), 16)
    assert frame_set(a) == frame_set(b)                    # same frames exactly, as a set
    assert np.array_equal(a[::-1], b)                       # ... in reverse order
    assert not np.array_equal(a, b)
    assert len(set(frame_set(a))) == 16                     # and every frame is distinct
    assert CLASSES[backward].temporal_order and CLASSES[forward].temporal_order


def test_encoded_partner_is_the_reversal_within_codec_tolerance(demo):
    a = decode(demo / "videos" / "move_left_to_right" / "move_left_to_right_0001.mp4")
    b = decode(demo / "videos" / "move_right_to_left" / "move_right_to_left_0001.mp4")
    reversed_error = np.abs(a.astype(int) - b[::-1]).mean()
    forward_error = np.abs(a.astype(int) - b).mean()
    assert reversed_error < 5 < forward_error


def test_motion_goes_the_way_the_class_says():
    """The object's colour-weighted centre moves right for left_to_right, and so on."""
    def centre(video: np.ndarray, axis: int) -> np.ndarray:
        diff = np.abs(video.astype(float) - np.median(video, axis=0)).sum(-1)   # moving object
        coords = np.arange(video.shape[1 + axis])
        weights = diff.sum(axis=2 - axis)
        return (weights * coords).sum(1) / weights.sum(1)

    right = centre(render_video("move_left_to_right", 0, 0, (64, 64), 16), axis=1)
    down = centre(render_video("move_top_to_bottom", 0, 0, (64, 64), 16), axis=0)
    time = np.arange(16)
    assert np.corrcoef(time, right)[0, 1] > 0.9 and np.corrcoef(time, down)[0, 1] > 0.9


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        generate_synthetic(tmp_path, classes=["dancing"])
    with pytest.raises(ValueError, match="even"):
        generate_synthetic(tmp_path, size=33)
