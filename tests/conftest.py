"""Shared fixtures: small real video files written with PyAV (see videotools.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # let tests import videotools as a plain module

import videotools  # noqa: E402


@pytest.fixture(scope="session")
def index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames of 64x48 at 30 fps, H.264, a keyframe every 10; the frames encode their index."""
    path = tmp_path_factory.mktemp("videos") / "index_gop10.mp4"
    return videotools.write_video(path, videotools.index_frames(60, 48, 64), gop=10)


@pytest.fixture(scope="session")
def long_gop_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``index_video`` but with a single keyframe (interval 250, ffmpeg's default)."""
    path = tmp_path_factory.mktemp("videos") / "index_gop250.mp4"
    return videotools.write_video(path, videotools.index_frames(60, 48, 64), gop=250)
