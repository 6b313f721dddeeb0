"""Specification of prepared storage (aim_core.prepared, aim_core.frame_archive): each video once,
short side and frame rate fixed, as keyframe-dense H.264 or JPEG frames, read back through the
same decode_frames / probe_video as any video."""

from __future__ import annotations

import hashlib
import io
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from videotools import (HAS_LIBC, fill_freed_heap_with, index_frames, marker_at_top_left,
                        picture_types, psnr, read_index, sequential_frames, smooth_frames,
                        textured_index_frames, write_video)

from aim_core.config import Config, ConfigError, PrepareConfig
from aim_core.prepared import prepare_video, prepared_size, resample
from aim_core.video import VideoDecodeError, decode_frames, probe_video

CODECS = ["h264", "jpeg"]
# Round-trip bounds, against the source resized by the same scaler. Chroma at 4:2:0 alone caps this
# saturated test content at 31-33 dB through swscale; x264 at crf 23 costs 2-3 dB more (28-30
# measured); libjpeg's smooth chroma upsampling keeps JPEG at quality 90 at 34-37 dB. A
# neighbouring frame scores at most 24 dB (asserted below), so the bounds also tell frames apart.
MIN_PSNR = {"h264": 27.0, "jpeg": 33.0}
NEIGHBOUR_PSNR = 24.0


def resized(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([av.VideoFrame.from_ndarray(f, format="rgb24").to_ndarray(
        format="rgb24", width=width, height=height) for f in frames])


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_keeps_count_rate_short_side_and_pixels(tmp_path: Path, codec: str) -> None:
    source = smooth_frames(45, 96, 128)
    fmt = PrepareConfig(codec=codec, short_side=64, fps=30)
    video = prepare_video(source, tmp_path / f"v{fmt.suffix}", fmt, source_fps=30)
    assert (video.num_frames, video.width, video.height) == (45, 86, 64)  # 85.3 -> even
    assert video.fps == pytest.approx(30) and video.duration == pytest.approx(1.5)
    info = probe_video(video.path)
    assert (info.num_frames, info.width, info.height) == (45, 86, 64)
    assert info.fps == pytest.approx(30)

    expected = resized(source, 86, 64)
    decoded = decode_frames(video.path, range(45))
    assert psnr(decoded, expected) >= MIN_PSNR[codec]
    assert all(psnr(d, e) >= MIN_PSNR[codec] - 1.5 for d, e in zip(decoded, expected))
    assert max(psnr(expected[i], expected[i + 1]) for i in range(44)) <= NEIGHBOUR_PSNR


@pytest.mark.parametrize("codec", CODECS)
def test_a_source_file_is_prepared_upright_at_the_short_side(tmp_path: Path, codec: str) -> None:
    upright = index_frames(40, 96, 128)
    coded = np.stack([np.ascontiguousarray(np.rot90(f, k=-1)) for f in upright])  # stored turned
    source = write_video(tmp_path / "rotated.mp4", coded, rotation=90)
    fmt = PrepareConfig(codec=codec, short_side=48)
    video = prepare_video(source, tmp_path / f"out{fmt.suffix}", fmt)
    assert (video.num_frames, video.width, video.height) == (40, 64, 48)
    frames = decode_frames(video.path, [0, 17, 39])
    assert [read_index(f) for f in frames] == [0, 17, 39]
    assert all(marker_at_top_left(f) for f in frames)
    assert probe_video(video.path).rotation == 0


def test_h264_has_a_keyframe_every_gop_and_reports_them(tmp_path: Path) -> None:
    fmt = PrepareConfig(codec="h264", short_side=48, gop=6)
    video = prepare_video(index_frames(40, 48, 64), tmp_path / "v.mp4", fmt, source_fps=30)
    assert video.keyframes is not None
    assert video.keyframes.indices == tuple(range(0, 40, 6))
    assert picture_types(video.path) == {"I", "P"}  # no B-frames unless asked for
    with_b = prepare_video(textured_index_frames(40, 48, 64), tmp_path / "b.mp4",
                           PrepareConfig(short_side=48, gop=20, bframes=3), source_fps=30)
    assert picture_types(with_b.path) == {"I", "P", "B"}
    indices = [3, 13, 20, 39]
    reference = sequential_frames(video.path)
    assert np.array_equal(decode_frames(video.path, indices, keyframes=video.keyframes),
                          np.stack([reference[i] for i in indices]))


def test_prepared_file_reports_size_and_digest(tmp_path: Path) -> None:
    video = prepare_video(index_frames(10, 48, 64), tmp_path / "v.zip", PrepareConfig(
        short_side=48), source_fps=30)
    data = Path(video.path).read_bytes()
    assert video.size_bytes == len(data)
    assert video.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.skipif(not HAS_LIBC, reason="needs the C library's malloc")
def test_a_prepared_file_depends_only_on_its_frames_not_on_what_the_heap_held(tmp_path: Path
                                                                               ) -> None:
    """x264's macroblock tree reads uninitialised memory on small frames (measured at 42x32 and
    96x64): with it on, this test fails."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (32 + 48, 42 + 48, 3), dtype=np.uint8)
    frames = np.stack([texture[t:t + 32, t:t + 42] for t in range(48)])
    fmt = PrepareConfig(short_side=32, fps=8)
    first = prepare_video(frames, tmp_path / "first.mp4", fmt, source_fps=8)
    fill_freed_heap_with(0xFF)   # NaN, read as floats
    second = prepare_video(frames, tmp_path / "second.mp4", fmt, source_fps=8)
    assert first.sha256 == second.sha256


# ----------------------------------------------------------------------------------------------
# Frame rate: frame selection by time
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fps,expected", [
    (30, list(range(30))),
    (15, list(range(0, 30, 2))),                       # every second frame
    (25, [j * 30 // 25 for j in range(25)]),           # one in six dropped
    (60, [j // 2 for j in range(60)]),                 # every frame shown twice
])
def test_rate_change_picks_the_frame_on_screen(tmp_path: Path, fps: int,
                                               expected: list[int]) -> None:
    fmt = PrepareConfig(codec="jpeg", short_side=48, fps=fps)
    video = prepare_video(index_frames(30, 48, 64), tmp_path / "v.zip", fmt, source_fps=30)
    assert video.num_frames == len(expected)                 # the same 1 s span
    frames = decode_frames(video.path, range(video.num_frames))
    assert [read_index(f) for f in frames] == expected


def test_a_variable_rate_source_comes_out_at_a_constant_rate(tmp_path: Path) -> None:
    steps = [6, 6, 15]  # in 1/180 s: frames last 1/30, 1/30 and 1/12 s in turn
    source = write_video(tmp_path / "vfr.mp4", index_frames(30, 48, 64), pts_steps=steps)
    shown = np.cumsum([0] + [steps[i % 3] for i in range(29)])  # each frame's time, 1/180 s
    video = prepare_video(source, tmp_path / "cfr.zip", PrepareConfig(short_side=48, fps=30))
    expected = [int(np.searchsorted(shown, 6 * j, side="right")) - 1
                for j in range(video.num_frames)]
    frames = decode_frames(video.path, range(video.num_frames))
    assert [read_index(f) for f in frames] == expected
    assert video.num_frames == (shown[-1] + 15) // 6  # the span, the last frame shown 1/12 s


def test_resample_is_exact_in_fractions() -> None:
    ntsc = Fraction(30000, 1001)
    frames = [(i / ntsc, i) for i in range(300)]  # 10.01 s of 29.97 fps
    out = list(resample(frames, Fraction(30), 1 / ntsc))
    assert len(out) == 301 and out[:3] == [0, 0, 1] and out[-1] == 299


# ----------------------------------------------------------------------------------------------
# JPEG-frame archives read like videos
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def archive(tmp_path: Path) -> Path:
    video = prepare_video(index_frames(20, 48, 64), tmp_path / "v.zip",
                          PrepareConfig(codec="jpeg", short_side=48), source_fps=30)
    return Path(video.path)


def test_archive_is_a_plain_zip_of_jpeg_frames(archive: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert "frames.json" in names and "000000.jpg" in names and len(names) == 21
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())


def test_archive_decodes_any_indices_resized_and_from_bytes(archive: Path) -> None:
    frames = decode_frames(archive, [19, 3, 3, 40])
    assert [read_index(f) for f in frames] == [19, 3, 3, 19]  # past the end: the last frame
    small = decode_frames(archive, [5], short_side=24)
    assert small.shape == (1, 24, 32, 3) and read_index(small[0]) == 5
    data = io.BytesIO(archive.read_bytes())
    assert probe_video(data).num_frames == 20
    assert [read_index(f) for f in decode_frames(data, [7])] == [7]


def test_a_zip_that_is_not_a_frame_archive_fails_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(VideoDecodeError, match="other.zip.*frames.json"):
        probe_video(path)
    with pytest.raises(VideoDecodeError, match="other.zip"):
        decode_frames(path, [0])


def test_a_truncated_archive_fails_naming_the_file(tmp_path: Path, archive: Path) -> None:
    path = tmp_path / "cut.zip"
    path.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(VideoDecodeError, match="cut.zip"):
        decode_frames(path, [0])


# ----------------------------------------------------------------------------------------------
# Failures leave nothing behind
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_a_bad_source_leaves_the_destination_as_it_was(tmp_path: Path, codec: str) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    fmt = PrepareConfig(codec=codec, short_side=48)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        prepare_video(bad, tmp_path / f"new{fmt.suffix}", fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]

    existing = tmp_path / f"old{fmt.suffix}"
    existing.write_bytes(b"what the user had")
    with pytest.raises(VideoDecodeError):
        prepare_video(bad, existing, fmt)
    assert existing.read_bytes() == b"what the user had"


class DropsMidway(io.BytesIO):
    """A source that breaks off, as a network read can, once 1.5 times its size has been read:
    the probe's pass gets through, the conversion's fails half-way."""

    delivered = 0

    def read(self, size: int = -1) -> bytes:
        if self.delivered > 1.5 * len(self.getbuffer()):
            raise OSError("connection reset")
        data = super().read(size)
        self.delivered += len(data)
        return data


@pytest.mark.parametrize("codec", CODECS)
def test_a_source_failing_midway_leaves_no_partial_file(tmp_path: Path, codec: str) -> None:
    good = write_video(tmp_path / "src.mkv", smooth_frames(90, 96, 128))
    out = tmp_path / "out"
    fmt = PrepareConfig(codec=codec, short_side=48)
    with pytest.raises(VideoDecodeError, match="connection reset"):
        prepare_video(DropsMidway(good.read_bytes()), out / f"v{fmt.suffix}", fmt)
    assert list(out.iterdir()) == []


def test_a_uri_destination_is_uploaded_whole(tmp_path: Path) -> None:
    dest = f"file://{tmp_path}/remote/v.zip"
    video = prepare_video(index_frames(8, 48, 64), dest, PrepareConfig(short_side=48),
                          source_fps=30)
    assert video.path == dest
    assert [read_index(f) for f in decode_frames(tmp_path / "remote" / "v.zip", [7])] == [7]


# ----------------------------------------------------------------------------------------------
# The storage format's settings
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("codec", "png", "prepare.codec: expected one of ['h264', 'jpeg'], got 'png'"),
    ("short_side", 255, "prepare.short_side: expected an even integer >= 2, got 255"),
    ("fps", 0, "prepare.fps: expected a number in (0, 240], got 0"),
    ("gop", 0, "prepare.gop: expected a positive integer, got 0"),
    ("bframes", -1, "prepare.bframes: expected an integer in [0, 16], got -1"),
    ("fast_decode", "yes", "prepare.fast_decode: expected true or false, got 'yes'"),
    ("crf", 60, "prepare.crf: expected an integer in [0, 51], got 60"),
    ("preset", "quick", "prepare.preset: expected one of"),
    ("jpeg_quality", 101, "prepare.jpeg_quality: expected an integer in [1, 100], got 101"),
])
def test_bad_settings_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config().with_overrides({f"prepare.{field}": value})
    assert str(error.value).startswith(message)


def test_frames_without_a_rate_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="source_fps"):
        prepare_video(index_frames(4, 48, 64), tmp_path / "v.zip", PrepareConfig(short_side=48))
    with pytest.raises(ValueError, match="frames: expected uint8"):
        prepare_video(np.zeros((4, 48, 64), np.uint8), tmp_path / "v.zip",
                      PrepareConfig(short_side=48), source_fps=30)


def test_prepared_size_fixes_the_short_side_and_keeps_the_long_side_even() -> None:
    assert prepared_size(340, 256, 256) == (340, 256)
    assert prepared_size(602, 256, 128) == (300, 128)   # 300.9 -> 300
    assert prepared_size(480, 360, 256) == (342, 256)   # 341.3 -> 342
    assert prepared_size(360, 640, 224) == (224, 398)   # portrait
