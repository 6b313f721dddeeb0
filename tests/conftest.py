"""Shared fixtures: small real video files written with PyAV (see videotools.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # let tests import videotools as a plain module

from pipelines.runtime import keep_private_cluster_on_loopback, worker_pool_settings  # noqa: E402

keep_private_cluster_on_loopback()  # the clusters tests start listen on 127.0.0.1, as the CLI's do

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


@pytest.fixture(scope="module")
def local_ray():
    """A fresh two-CPU Ray cluster for one test module.

    ``address="local"`` always starts a new cluster: plain ``ray.init()`` would join any head that
    ``ray start`` left on this machine. The dashboard stays on: Tune needs it to release trials.
    """
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
             log_to_driver=False, _system_config=worker_pool_settings(2))
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def clip_tower(tmp_path_factory):
    """A real open_clip vision tower (random weights), saved as an open_clip-style weights file."""
    torch.manual_seed(0)
    import open_clip.model

    tower = open_clip.model.VisionTransformer(
        image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=4.0, output_dim=32,
        act_layer=open_clip.model.QuickGELU).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny_clip.pt"
    torch.save({"state_dict": {f"visual.{k}": v for k, v in tower.state_dict().items()}}, path)
    tower.proj = None  # its output is then ln_post(CLS): the per-frame image feature
    return tower, str(path)


@pytest.fixture
def isolated_mlflow(monkeypatch):
    """MLflow keeps the URI in a module global and exports it to the environment: clear both,
    before (an earlier test may have set them) and after."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    yield
    mlflow.set_tracking_uri(None)
