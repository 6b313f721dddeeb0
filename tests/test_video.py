"""Specification of aim_core.video: decoding real H.264 files, and the frame-index samplers."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from videotools import (index_frames, keyframe_indices, leading_pictures, marker_at_top_left,
                        packets, picture_types, read_index, sequential_frames,
                        textured_index_frames, write_audio_only, write_video)

from aim_core.config import DataConfig
from aim_core.video import (SEEK_COST_FRAMES, Keyframes, VideoDecodeError, clip_indices,
                            decode_frames, dense_indices, plan_decoding, probe_video,
                            rotate_upright, tsn_uniform_indices, uniform_indices)


def indices_of(frames: np.ndarray) -> list[int]:
    return [read_index(f) for f in frames]


# ----------------------------------------------------------------------------------------------
# probe_video
# ----------------------------------------------------------------------------------------------

def test_probe_reports_count_rate_size_duration(index_video: Path) -> None:
    info = probe_video(index_video)
    assert (info.num_frames, info.width, info.height, info.rotation) == (60, 64, 48, 0)
    assert info.fps == pytest.approx(30.0)
    assert info.duration == pytest.approx(2.0, abs=0.05)


def test_probe_reads_bytes_from_object_storage(index_video: Path) -> None:
    data = io.BytesIO(index_video.read_bytes())
    assert probe_video(data).num_frames == 60
    # The same buffer can then be decoded: sources are rewound before use.
    assert indices_of(decode_frames(data, [7])) == [7]


def test_probe_counts_packets_when_the_container_has_no_frame_count(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mkv", index_frames(37, 48, 64))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no count
    assert probe_video(path).num_frames == 37


# ----------------------------------------------------------------------------------------------
# decode_frames: which frames come back
# ----------------------------------------------------------------------------------------------

def test_decode_returns_uint8_rgb_frames_in_the_order_asked(index_video: Path) -> None:
    frames = decode_frames(index_video, [0, 5, 10, 59])
    assert frames.shape == (4, 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == [0, 5, 10, 59]


def test_decode_handles_unsorted_and_repeated_indices(index_video: Path) -> None:
    assert indices_of(decode_frames(index_video, [40, 3, 40, 17, 3])) == [40, 3, 40, 17, 3]


@pytest.mark.parametrize("video", ["index_video", "long_gop_video"])
@pytest.mark.parametrize("threads", [1, 2])
def test_decode_far_into_the_file_with_short_and_long_gop(video: str, threads: int,
                                                          request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(video)
    wanted = [45, 47, 49, 51, 53, 55, 57, 59]
    assert indices_of(decode_frames(path, wanted, threads=threads)) == wanted
    assert indices_of(decode_frames(path, [33, 21])) == [33, 21]


def test_test_files_have_the_keyframes_they_claim(index_video: Path, long_gop_video: Path) -> None:
    assert keyframe_indices(index_video) == [0, 10, 20, 30, 40, 50]
    assert keyframe_indices(long_gop_video) == [0]


def test_indices_past_the_end_get_the_last_frame(index_video: Path) -> None:
    assert indices_of(decode_frames(index_video, [58, 59, 60, 100])) == [58, 59, 59, 59]
    assert indices_of(decode_frames(index_video, [200])) == [59]


def test_negative_or_no_indices_are_refused(index_video: Path) -> None:
    with pytest.raises(ValueError):
        decode_frames(index_video, [-1])
    with pytest.raises(ValueError):
        decode_frames(index_video, [])


def test_variable_frame_rate_indices_count_frames_in_presentation_order(tmp_path: Path) -> None:
    # Timestamps jump irregularly (1, 1, 2.5 frame durations...): index k is still the k-th frame.
    path = write_video(tmp_path / "vfr.mp4", index_frames(40, 48, 64), pts_steps=[6, 6, 15])
    wanted = [0, 1, 2, 3, 20, 39]
    assert indices_of(decode_frames(path, wanted)) == wanted
    assert probe_video(path).num_frames == 40


# ----------------------------------------------------------------------------------------------
# decode_frames: seek-aware decoding returns exactly the frames of a sequential decode
# ----------------------------------------------------------------------------------------------

CODED = {  # 200 frames: room for a dense 8x16 clip (span 128) anywhere in the first 72
    "bframes_gop8": dict(gop=8),
    "bframes_gop64": dict(gop=64),
    "x264_default_gop250": dict(gop=250),
    "all_intra": dict(gop=1),
    "open_gop12": dict(gop=12, x264_params="open-gop=1"),
    "open_gop12_mkv": dict(gop=12, x264_params="open-gop=1", suffix=".mkv"),
    "vfr_gop8": dict(gop=8, pts_steps=[6, 6, 15]),
    "vfr_open_gop10_mkv": dict(gop=10, pts_steps=[6, 3, 15, 6], x264_params="open-gop=1",
                               suffix=".mkv"),
}
NUM_FRAMES = 200


@pytest.fixture(scope="module")
def coded_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same textured index frames under each coding of :data:`CODED` (H.264, 3 B-frames)."""
    folder = tmp_path_factory.mktemp("coded")
    frames = textured_index_frames(NUM_FRAMES, 48, 64)
    videos = {}
    for name, options in CODED.items():
        options = dict(options)
        path = folder / f"{name}{options.pop('suffix', '.mp4')}"
        videos[name] = write_video(path, frames, **options)
    return videos


def _index_sets(kind: str) -> list[list[int]]:
    rng = np.random.default_rng(7)
    if kind == "dense_train":  # Kinetics 8x16 training clips
        return [dense_indices(NUM_FRAMES, 8, 16, train=True, rng=rng)[0] for _ in range(6)]
    if kind == "dense_test":   # three 8x16 test views in one call, as evaluation decodes them
        return [[i for clip in dense_indices(NUM_FRAMES, 8, 16, train=False, num_clips=3)
                 for i in clip]]
    if kind == "uniform":      # SSv2-style segments, train and test
        return ([uniform_indices(NUM_FRAMES, 8, train=True, rng=rng) for _ in range(4)]
                + [uniform_indices(NUM_FRAMES, 16, train=False)])
    return [[199, 5, 250, 5, 100], [17], [60, 61, 62], list(range(0, NUM_FRAMES, 3))]


def test_the_coded_files_have_the_structure_they_claim(coded_videos: dict[str, Path]) -> None:
    for name, path in coded_videos.items():
        types = picture_types(path)
        assert types == ({"I"} if name == "all_intra" else {"I", "P", "B"}), name
        assert (leading_pictures(path) > 0) == ("open_gop" in name), name
        gop = CODED[name]["gop"]
        assert keyframe_indices(path) == list(range(0, NUM_FRAMES, gop)), name
        assert [read_index(f) for f in sequential_frames(path)] == list(range(NUM_FRAMES))
    assert probe_video(coded_videos["vfr_gop8"]).fps != pytest.approx(30.0)


@pytest.mark.parametrize("kind", ["dense_train", "dense_test", "uniform", "odd"])
@pytest.mark.parametrize("name", list(CODED))
def test_seek_aware_decoding_returns_the_frames_of_a_sequential_decode(
        coded_videos: dict[str, Path], name: str, kind: str) -> None:
    path = coded_videos[name]
    reference = sequential_frames(path)
    keyframes = probe_video(path, keyframes=True).keyframes
    for indices in _index_sets(kind):
        expected = np.stack([reference[min(i, NUM_FRAMES - 1)] for i in indices])
        # pixel-exact, whether the keyframes are found here or were kept from a scan
        assert np.array_equal(decode_frames(path, indices), expected), indices
        assert np.array_equal(decode_frames(path, indices, keyframes=keyframes), expected)


def test_seek_aware_decoding_with_decoder_threads(coded_videos: dict[str, Path]) -> None:
    path = coded_videos["open_gop12"]
    reference = sequential_frames(path)
    (indices,) = _index_sets("dense_test")
    assert np.array_equal(decode_frames(path, indices, threads=2),
                          np.stack([reference[i] for i in indices]))


def test_probe_finds_keyframes_by_presentation_index(coded_videos: dict[str, Path]) -> None:
    for name, path in coded_videos.items():
        keyframes = probe_video(path, keyframes=True).keyframes
        assert list(keyframes.indices) == keyframe_indices(path), name
    # In an open GOP a keyframe's leading pictures come after it in decode order, so its
    # presentation index is not its position among the packets: the table must not confuse them.
    path = coded_videos["open_gop12"]
    positions = [i for i, (_, key) in enumerate(packets(path)) if key]
    assert positions != list(probe_video(path, keyframes=True).keyframes.indices)
    assert probe_video(path).keyframes is None  # only when asked: it reads the whole file


def test_a_stale_keyframe_table_falls_back_to_a_sequential_decode(
        coded_videos: dict[str, Path]) -> None:
    path = coded_videos["bframes_gop8"]
    wrong = Keyframes(indices=(0, 80, 150), pts=(0, 123, 4567))  # no packet has these pts
    indices = [150, 160, 170]
    assert [read_index(f) for f in decode_frames(path, indices, keyframes=wrong)] == indices


def test_keyframes_accept_arrays_and_refuse_inconsistent_tables() -> None:
    table = Keyframes(indices=np.array([0, 8]), pts=[0, 4096])
    assert table.indices == (0, 8) and table.pts == (0, 4096)
    with pytest.raises(ValueError, match="indices"):
        Keyframes(indices=(0, 8), pts=(0,))
    with pytest.raises(ValueError, match="increasing"):
        Keyframes(indices=(8, 0), pts=(0, 1))


# ----------------------------------------------------------------------------------------------
# plan_decoding: when to seek
# ----------------------------------------------------------------------------------------------

def test_all_intra_clips_cost_their_sampled_frames() -> None:
    clip = list(range(40, 168, 16))
    plan = plan_decoding(clip, list(range(NUM_FRAMES)))
    assert plan == [(i, [i]) for i in clip]  # a seek straight to every frame


def test_a_single_keyframe_file_is_decoded_through_from_the_start() -> None:
    clip = list(range(40, 168, 16))
    assert plan_decoding(clip, [0]) == [(None, clip)]
    assert plan_decoding(clip, [0], at_start=False) == [(0, clip)]  # e.g. after a scan


def test_seeking_pays_only_when_it_skips_more_than_it_costs() -> None:
    keyframes = [0, 64, 128]
    # from frame 70 (next: 71) to 129: seeking to 128 skips 128 - 71 frames
    assert plan_decoding([70, 129], keyframes) == [(1, [70]), (2, [129])]
    # next frame 126, keyframe 128: skipping two frames does not pay for a seek
    near = 128 - SEEK_COST_FRAMES
    assert plan_decoding([near - 1, 129], keyframes) == [(1, [near - 1, 129])]
    # a few frames in from the start: decode on rather than seek to the first keyframe
    assert plan_decoding([3, 5], keyframes) == [(None, [3, 5])]
    assert plan_decoding([5], [8], at_start=False) is None  # nowhere to start from


# ----------------------------------------------------------------------------------------------
# decode_frames: geometry and pixel formats
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv444p"), ("libx264", "gray"),
                                           ("libx264rgb", "rgb24")])
def test_odd_sizes_and_other_pixel_formats(tmp_path: Path, codec: str, pix_fmt: str) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not available")
    path = write_video(tmp_path / f"{pix_fmt}.mp4", index_frames(30, 47, 63), codec=codec,
                       pix_fmt=pix_fmt)
    frames = decode_frames(path, [29, 0, 13])
    assert frames.shape == (3, 47, 63, 3)
    assert indices_of(frames) == [29, 0, 13]


def test_short_side_resize_keeps_the_aspect_ratio(index_video: Path) -> None:
    frames = decode_frames(index_video, [3, 30], short_side=24)
    assert frames.shape == (2, 24, 32, 3)
    assert indices_of(frames) == [3, 30]
    tall = decode_frames(index_video, [3], short_side=96)  # upscaling works too
    assert tall.shape == (1, 96, 128, 3)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_gives_upright_frames(tmp_path: Path, rotation: int) -> None:
    upright = index_frames(20, 48, 64)
    # Store the frames turned the other way, with a display matrix that turns them back.
    coded = np.stack([np.ascontiguousarray(np.rot90(f, k=-rotation // 90)) for f in upright])
    path = write_video(tmp_path / f"rot{rotation}.mp4", coded, rotation=rotation)
    info = probe_video(path)
    assert (info.rotation, info.width, info.height) == (rotation, 64, 48)
    frames = decode_frames(path, [4, 19], short_side=24)
    assert frames.shape == (2, 24, 32, 3)
    assert indices_of(frames) == [4, 19]
    assert all(marker_at_top_left(f) for f in frames)


def test_rotate_upright_turns_counter_clockwise() -> None:
    image = np.array([[1, 2], [3, 4]])[..., None]
    assert rotate_upright(image, 90)[..., 0].tolist() == [[2, 4], [1, 3]]
    assert rotate_upright(image, 0) is image
    with pytest.raises(ValueError):
        rotate_upright(image, 45)


# ----------------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------------

def _bad_file(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.mp4"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "audio_only":
        path = write_audio_only(tmp_path / "audio.m4a")
    elif kind == "missing":
        path = tmp_path / "does_not_exist.mp4"
    return path


@pytest.mark.parametrize("kind", ["random_bytes", "empty", "truncated", "audio_only", "missing"])
def test_unreadable_files_raise_video_decode_error_naming_the_file(
        kind: str, tmp_path: Path, index_video: Path) -> None:
    path = _bad_file(kind, tmp_path, index_video)
    with pytest.raises(VideoDecodeError, match=path.name):
        probe_video(path)
    with pytest.raises(VideoDecodeError, match=path.name):
        decode_frames(path, [0, 5])
    with pytest.raises(VideoDecodeError):
        decode_frames(io.BytesIO(path.read_bytes() if path.exists() else b""), [0])


def test_audio_only_error_says_there_is_no_video(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe_video(write_audio_only(tmp_path / "a.mp4", codec="mp2"))


# ----------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------

def test_dense_test_kinetics_three_clips_of_8x16_over_300_frames() -> None:
    # span 128; avg = (300 - 128 + 1) / 3 = 57.67; starts int(28.83), int(86.5), int(144.17)
    clips = dense_indices(300, 8, 16, train=False, num_clips=3)
    assert clips == [list(range(28, 28 + 128, 16)), list(range(86, 86 + 128, 16)),
                     list(range(144, 144 + 128, 16))]
    assert clips[2][-1] == 256


def test_dense_test_single_clip_is_centred() -> None:
    # avg = 300 - 128 + 1 = 173, start int(86.5) = 86
    assert dense_indices(300, 8, 16, train=False) == [list(range(86, 214, 16))]


def test_dense_short_video_starts_at_zero_and_wraps_around() -> None:
    # 50 frames, span 64: start 0, indices modulo 50
    expected = [[0, 8, 16, 24, 32, 40, 48, 6]]
    assert dense_indices(50, 8, 8, train=False) == expected
    assert dense_indices(50, 8, 8, train=True, rng=np.random.default_rng(0)) == expected
    assert dense_indices(50, 8, 8, train=False, num_clips=3) == expected * 3


def test_dense_train_start_is_random_within_the_valid_range() -> None:
    rng = np.random.default_rng(0)
    starts = {dense_indices(300, 8, 16, train=True, rng=rng)[0][0] for _ in range(2000)}
    assert min(starts) == 0 and max(starts) == 300 - 128
    (clip,) = dense_indices(300, 8, 16, train=True, rng=np.random.default_rng(1))
    assert np.diff(clip).tolist() == [16] * 7


def test_samplers_are_deterministic_given_the_generator() -> None:
    a = dense_indices(300, 8, 16, train=True, rng=np.random.default_rng(42))
    b = dense_indices(300, 8, 16, train=True, rng=np.random.default_rng(42))
    assert a == b
    assert (uniform_indices(45, 8, train=True, rng=np.random.default_rng(7))
            == uniform_indices(45, 8, train=True, rng=np.random.default_rng(7)))


def official_segments(n: int, t: int) -> list[tuple[int, int]]:
    """The released configs' rule, transcribed from mmaction2 ``SampleFrames.get_seq_frames``."""
    seg_size = float(n - 1) / t
    return [(int(np.round(seg_size * i)), int(np.round(seg_size * (i + 1)))) for i in range(t)]


@pytest.mark.parametrize("n", [8, 45, 64, 128, 300])
@pytest.mark.parametrize("t", [8, 16, 32])
def test_uniform_test_indices_follow_the_official_rule(n: int, t: int) -> None:
    expected = [(lo + hi) // 2 for lo, hi in official_segments(n, t)]
    assert uniform_indices(n, t, train=False) == expected


def test_uniform_test_ssv2_8_segments_over_45_frames() -> None:
    # seg = 44 / 8 = 5.5; bounds round half to even: (0,6) (6,11) (11,16) (16,22) (22,28) (28,33)
    # (33,38) (38,44). TSN-style segments of 45 / 8 frames put 4 of the 8 middles one frame later.
    assert uniform_indices(45, 8, train=False) == [3, 8, 13, 19, 25, 30, 35, 41]
    assert tsn_uniform_indices(45, 8, train=False) == [2, 8, 14, 19, 25, 30, 36, 42]


@pytest.mark.parametrize("n", [8, 45, 64, 128, 300])
def test_uniform_train_draws_every_frame_of_each_segment_both_ends_included(n: int) -> None:
    rng = np.random.default_rng(0)
    seen: list[set[int]] = [set() for _ in range(8)]
    for _ in range(1500):
        for i, index in enumerate(uniform_indices(n, 8, train=True, rng=rng)):
            seen[i].add(index)
    assert seen == [set(range(lo, hi + 1)) for lo, hi in official_segments(n, 8)]
    assert n - 1 in seen[-1]  # the last frame can be drawn (TSN-style segments never reach it)


def test_tsn_uniform_train_draws_one_frame_per_half_open_segment() -> None:
    # Segments [floor(5.625 i), floor(5.625 (i+1))): [0,5) [5,11) [11,16) [16,22) [22,28) [28,33)
    # [33,39) [39,45); every frame of every segment gets drawn.
    bounds = [0, 5, 11, 16, 22, 28, 33, 39, 45]
    rng = np.random.default_rng(0)
    seen: list[set[int]] = [set() for _ in range(8)]
    for _ in range(500):
        for i, index in enumerate(tsn_uniform_indices(45, 8, train=True, rng=rng)):
            seen[i].add(index)
    assert seen == [set(range(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def test_uniform_with_fewer_frames_than_segments_repeats_sorted_indices() -> None:
    # seg = 0.5, bounds rounded half to even: (0,0) (0,1) (1,2) (2,2) (2,2) (2,3) (3,4) (4,4).
    assert uniform_indices(5, 8, train=False) == [0, 0, 1, 2, 2, 2, 3, 4]
    assert tsn_uniform_indices(5, 8, train=False) == [0, 0, 1, 2, 2, 3, 4, 4]
    rng = np.random.default_rng(3)
    for _ in range(50):
        for sample in (uniform_indices, tsn_uniform_indices):
            drawn = sample(5, 8, train=True, rng=rng)
            assert drawn == sorted(drawn) and set(drawn) <= set(range(5))


def test_clip_indices_dense_views_follow_the_config() -> None:
    cfg = DataConfig(sampler="dense", frame_interval=16, test_clips=3)
    assert clip_indices(cfg, 300, 8, train=False) == dense_indices(300, 8, 16, train=False,
                                                                   num_clips=3)
    (train_view,) = clip_indices(cfg, 300, 8, train=True, rng=np.random.default_rng(0))
    assert len(train_view) == 8


def test_clip_indices_uniform_views_offset_within_segments() -> None:
    one = DataConfig(sampler="uniform", test_clips=1)
    assert clip_indices(one, 45, 8, train=False) == [[3, 8, 13, 19, 25, 30, 35, 41]]
    # 3 views over 25 frames, 4 segments [0,6] [6,12] [12,18] [18,24]: offsets 1, 3, 5 within each.
    three = DataConfig(sampler="uniform", test_clips=3)
    assert clip_indices(three, 25, 4, train=False) == [[1, 7, 13, 19], [3, 9, 15, 21],
                                                       [5, 11, 17, 23]]
    assert len(clip_indices(three, 25, 4, train=True, rng=np.random.default_rng(0))) == 1


def test_clip_indices_tsn_views_offset_within_segments() -> None:
    # 3 views over 24 frames, 4 segments of 6: offsets 1, 3, 5 within each segment.
    three = DataConfig(sampler="uniform_tsn", test_clips=3)
    assert clip_indices(three, 24, 4, train=False) == [[1, 7, 13, 19], [3, 9, 15, 21],
                                                       [5, 11, 17, 23]]
