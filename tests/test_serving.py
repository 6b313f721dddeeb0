"""Serving registered models: one frozen backbone per replica, many adapter sets.

The first part runs without Ray: the settings, the pool's sharing (real tiny models over a real
open_clip tower file), batching by loaded version, and the replica's input handling on real MP4s.
The second part starts one real Serve application on a local two-CPU cluster, over models in a
real sqlite registry, and talks to it over HTTP with ``requests``.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import videotools

from aim_core.backbones import build_model
from aim_core.config import Config, ConfigError, ModelConfig
from aim_core.inference import Inference
from pipelines.evaluation.evaluate import load_views
from pipelines.serving.footprint import (estimate_table, shared_with, sharing_estimate,
                                         weight_footprint)
from pipelines.serving.inputs import (RequestError, StoredVideo, Upload, UriPolicy,
                                      decode_views, decode_within, read_body, video_source)
from pipelines.serving.pool import ModelPool, ServedModel, backbone_key, score_videos
from pipelines.serving.settings import ServeConfig, ServedRef, parse_served
from pipelines.tracking.references import ModelReferenceError

from .modeltools import CLASSES, tracked_config

MIB = 2**20


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every tunable weight moved by a seed's noise: "trained" differently."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.tunable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def frozen_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]
            if not model.is_tunable(n)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Real H.264 MP4s: two with different motion, one cut in half, one not a video at all."""
    root = tmp_path_factory.mktemp("videos")
    frames = videotools.index_frames(40, 48, 64)
    out = {"forward": videotools.write_video(root / "forward.mp4", frames, gop=10),
           "backward": videotools.write_video(root / "backward.mp4", frames[::-1], gop=10)}
    data = out["forward"].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "notes.mp4").write_bytes(b"these are my notes, not a video\n" * 20)
    out.update(truncated=root / "truncated.mp4", text=root / "notes.mp4")
    return out


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, clip_tower) -> Config:
    return tracked_config(tmp_path_factory.mktemp("cfg"), weights=clip_tower[1])


# ----------------------------------------------------------------------------------------------
# Settings and references
# ----------------------------------------------------------------------------------------------

def test_the_defaults_listen_on_loopback_and_read_uploads_only():
    settings = ServeConfig.from_dict({})
    assert settings.host == "127.0.0.1"
    assert settings.allowed_uri_prefixes == []
    with pytest.raises(RequestError) as refused:
        UriPolicy(tuple(settings.allowed_uri_prefixes)).check("/etc/passwd")
    assert refused.value.status == 403 and "uploads only" in refused.value.message


@pytest.mark.parametrize("data, message", [
    ({"max_upload_bytes": 0}, "serve.max_upload_bytes: expected a positive integer, got 0"),
    ({"batch_wait_s": -1}, "serve.batch_wait_s: expected a non-negative number, got -1.0"),
    ({"port": 70000}, "serve.port: expected a port in 1..65535, got 70000"),
    ({"allowed_uri_prefixes": ["videos"]}, "serve.allowed_uri_prefixes[0]: expected an absolute "
                                           "folder or a URI prefix"),
    ({"max_batch": 4}, "serve.max_batch: unknown field"),
    ({"decode_timeout_s": "soon"}, "serve.decode_timeout_s: expected a number, got 'soon'"),
])
def test_bad_settings_fail_naming_the_field(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ServeConfig.from_dict(data)


def test_served_references_are_registered_models_with_one_route_each():
    assert parse_served(["models:/a@champion", "models:/b/3"]) == [
        ServedRef("a", alias="champion"), ServedRef("b", version="3")]
    assert ServedRef("a", alias="champion").uri == "models:/a@champion"
    with pytest.raises(ModelReferenceError, match="serve takes registered models"):
        ServedRef.parse("runs:/0123/checkpoint")
    with pytest.raises(ModelReferenceError, match="'a' is given twice"):
        parse_served(["models:/a@champion", "models:/a/2"])


# ----------------------------------------------------------------------------------------------
# The pool: one copy of a backbone, each model its own adapters
# ----------------------------------------------------------------------------------------------

def test_models_on_one_backbone_hold_the_same_frozen_tensors_and_their_own_adapters(tiny_cfg):
    torch.manual_seed(0)
    a, b = (perturbed(build_model(tiny_cfg.model), seed) for seed in (1, 2))
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = a(x), b(x)
    pool = ModelPool("cpu")
    assert pool.share_frozen(a) == 0                  # the first model brings the copy
    frozen = frozen_tensors(a)
    assert pool.share_frozen(b) == len(frozen)
    for name, tensor in frozen_tensors(b).items():
        assert tensor.data_ptr() == frozen[name].data_ptr(), name
    for (name, ta), (_, tb) in zip(a.tunable_state_dict().items(), b.tunable_state_dict().items()):
        assert ta.data_ptr() != tb.data_ptr(), name
    with torch.no_grad():                             # sharing changes no number
        torch.testing.assert_close(a(x), expected[0], rtol=0, atol=0)
        torch.testing.assert_close(b(x), expected[1], rtol=0, atol=0)
    assert not torch.equal(expected[0], expected[1])  # and each model keeps its own answer
    assert shared_with({"a": a, "b": b}) == {"a": ["b"], "b": ["a"]}

    tunable = sum(t.nbytes for t in a.tunable_state_dict().values())
    frozen_bytes = sum(t.nbytes for t in frozen.values())
    footprint = weight_footprint([a, b])
    assert footprint.weight_bytes == frozen_bytes + 2 * tunable
    assert footprint.separate_bytes == 2 * (frozen_bytes + tunable)


def test_random_and_different_backbones_are_never_shared(tiny_cfg, tmp_path, clip_tower):
    m = tiny_cfg.model
    random_cfg = replace(m, backbone=replace(m.backbone, pretrained=None))
    r1, r2 = build_model(random_cfg), build_model(random_cfg)
    r2.load_state_dict(r1.state_dict())               # even with equal values: no proven identity
    assert backbone_key(r1.backbone_identity) is None
    pool = ModelPool("cpu")
    assert pool.share_frozen(r1) == 0 and pool.share_frozen(r2) == 0
    assert shared_with({"r1": r1, "r2": r2}) == {"r1": [], "r2": []}

    other_file = tmp_path / "other_tower.pt"          # same architecture, other weights
    state = torch.load(clip_tower[1], weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v + 0.01 for k, v in state.items()}}, other_file)
    other_cfg = replace(m, backbone=replace(m.backbone, pretrained=str(other_file)))
    mine, theirs = build_model(m), build_model(other_cfg)
    assert pool.share_frozen(mine) == 0 and pool.share_frozen(theirs) == 0
    assert shared_with({"mine": mine, "theirs": theirs}) == {"mine": [], "theirs": []}


def test_the_meta_count_for_vit_b16_is_86m_frozen_plus_11m_per_model():
    estimate = sharing_estimate(ModelConfig())        # CLIP ViT-B/16, 8 frames, 400 classes
    assert round(estimate.frozen / 1e6) == 86 and round(estimate.tunable / 1e6) == 11
    assert estimate.shared(8) == estimate.frozen + 8 * estimate.tunable
    assert estimate.separate(8) == 8 * (estimate.frozen + estimate.tunable)
    table = estimate_table(estimate, counts=(1, 8))
    assert table.splitlines()[-1].startswith("| 8 | 173.5M") and "| 0.22x |" in table


def served(model: torch.nn.Module, cfg: Config, version: str) -> ServedModel:
    return ServedModel(ServedRef("m", alias="champion"), version, model, cfg, list(CLASSES),
                       Inference.for_config(cfg, "cpu"))


def test_a_batch_scores_each_video_with_the_version_it_was_admitted_with(tiny_cfg, videos):
    old, new = (served(perturbed(build_model(tiny_cfg.model), s), tiny_cfg, v)
                for s, v in ((1, "1"), (2, "2")))
    views = [load_views(videos[name], tiny_cfg) for name in ("forward", "backward", "forward")]
    items = [(old, views[0]), (new, views[1]), (old, views[2])]
    scored = score_videos(items)
    for (entry, v), probs in zip(items, scored):
        alone = entry.inference.probabilities(entry.model, v).mean(dim=0)
        torch.testing.assert_close(probs, alone, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scored[0], scored[2])


# ----------------------------------------------------------------------------------------------
# Inputs: uploads, URIs, limits
# ----------------------------------------------------------------------------------------------

def test_uris_are_read_only_under_an_allowed_prefix(tmp_path):
    allowed = tmp_path / "videos"
    (allowed / "a").mkdir(parents=True)
    (tmp_path / "videos-private").mkdir()
    (allowed / "escape.mp4").symlink_to(tmp_path / "videos-private" / "x.mp4")
    policy = UriPolicy((str(allowed), "s3://bucket/videos/"))
    assert policy.check(str(allowed / "a" / "v.mp4")) == str(allowed / "a" / "v.mp4")
    assert policy.check(f"file://{allowed}/v.mp4") == str(allowed / "v.mp4")
    assert policy.check("s3://bucket/videos/k400/v.mp4") == "s3://bucket/videos/k400/v.mp4"
    for refused in (f"{allowed}/../videos-private/x.mp4", str(allowed / "escape.mp4"),
                    str(tmp_path / "videos-private" / "x.mp4"), "videos/a/v.mp4",
                    "s3://bucket/videos/../secrets/k.mp4", "s3://bucket/videos-private/v.mp4",
                    "gs://bucket/videos/v.mp4"):
        with pytest.raises(RequestError) as exc:
            policy.check(refused)
        assert exc.value.status == 403, refused


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"", "video/mp4", 400, "empty request body"),
    (b"{not json", "application/json", 400, "does not parse"),
    (b'{"url": "/x.mp4"}', "application/json", 400, 'a JSON body is {"uri"'),
    (b'{"uri": "/x.mp4", "fps": 3}', "application/json; charset=utf-8", 400, "fps: unknown field"),
])
def test_a_malformed_request_is_a_400_naming_what_is_wrong(body, content_type, status, message):
    with pytest.raises(RequestError) as exc:
        video_source(body, content_type, UriPolicy(("/",)))
    assert exc.value.status == status and message in exc.value.message


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole():
    read = asyncio.run(read_body("6", _chunks(b"abc", b"def"), max_bytes=6))
    assert read == b"abcdef"
    for declared in ("7", None):                      # by its header, or as the stream runs over
        with pytest.raises(RequestError) as exc:
            asyncio.run(read_body(declared, _chunks(b"abc", b"defg"), max_bytes=6))
        assert exc.value.status == 413 and "serve.max_upload_bytes" in exc.value.message


def test_an_upload_gives_the_same_views_as_its_file(tiny_cfg, videos):
    path = videos["forward"]
    views = decode_views(Upload(path.read_bytes()), tiny_cfg, time.monotonic() + 60, MIB)
    torch.testing.assert_close(views, load_views(path, tiny_cfg), rtol=0, atol=0)
    stored = decode_views(StoredVideo(str(path)), tiny_cfg, time.monotonic() + 60, MIB)
    torch.testing.assert_close(stored, views, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["text", "truncated"])
def test_what_is_not_a_whole_video_is_a_422(tiny_cfg, videos, name):
    with pytest.raises(RequestError) as exc:
        decode_views(Upload(videos[name].read_bytes()), tiny_cfg, time.monotonic() + 60, MIB)
    assert exc.value.status == 422 and "not a readable video: upload" in exc.value.message


def test_stored_videos_that_are_missing_or_too_large_are_refused(tiny_cfg, videos):
    for source, limit, status in ((StoredVideo(str(videos["forward"]) + ".gone"), MIB, 404),
                                  (StoredVideo(str(videos["forward"])), 100, 413)):
        with pytest.raises(RequestError) as exc:
            decode_views(source, tiny_cfg, time.monotonic() + 60, limit)
        assert exc.value.status == status


def test_decoding_past_its_time_limit_is_stopped_with_a_422(tiny_cfg, videos):
    upload = Upload(videos["forward"].read_bytes())
    with ThreadPoolExecutor(1) as threads:
        with pytest.raises(RequestError) as exc:      # the reader refuses PyAV past the deadline
            asyncio.run(decode_within(threads, upload, tiny_cfg, 1e-9, MIB))
        assert exc.value.status == 422 and "serve.decode_timeout_s" in exc.value.message
        views = asyncio.run(decode_within(threads, upload, tiny_cfg, 60.0, MIB))
    assert views.shape == (2, 3, 4, 32, 32)

