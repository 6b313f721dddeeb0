"""Serving registered models: one frozen backbone per replica, many adapter sets.

The first part runs without Ray: the settings, the pool's sharing (real tiny models over a real
open_clip tower file), batching by loaded version, and the replica's input handling on real MP4s.
The second part starts one real Serve application on a local two-CPU cluster, over models in a
real sqlite registry, and talks to it over HTTP with ``requests``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import torch
import videotools
from mlflow import MlflowClient

from aim_core.backbones import build_model
from aim_core.checkpoint import save_model
from aim_core.config import Config, ConfigError, ModelConfig
from aim_core.inference import Inference
from pipelines.cli import main
from pipelines.evaluation.evaluate import load_views
from pipelines.evaluation.predict import predict_videos
from pipelines.serving.footprint import (estimate_table, shared_with, sharing_estimate,
                                         weight_footprint)
from pipelines.serving.inputs import (RequestError, StoredVideo, Upload, UriPolicy,
                                      decode_views, decode_within, read_body, video_source)
from pipelines.serving.pool import ModelPool, ServedModel, backbone_key, score_videos
from pipelines.serving.settings import ServeConfig, ServedRef, parse_served
from pipelines.tracking.references import ModelReferenceError

from .modeltools import CLASSES, tracked_config

MIB = 2**20
ROOT = Path(__file__).resolve().parents[1]


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


def test_the_command_refuses_bad_settings_and_unknown_models_in_one_line(tmp_path, monkeypatch,
                                                                         capsys):
    from pipelines import runtime

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["serve", "models:/x@champion", "--set", "max_upload_bytes=0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "aim-video serve: serve.max_upload_bytes: expected a positive integer, got 0")
    assert main(["serve", "models:/nowhere@champion"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aim-video serve: models:/nowhere@champion: not in the registry")
    assert len(err.splitlines()) == 1
    assert runtime.private_sessions() == []          # refused before any cluster started


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
    assert views.shape == (2, 4, 32, 32, 3) and views.dtype == torch.uint8   # (V, T, H, W, 3)


@pytest.mark.slow
def test_the_watcher_swaps_in_a_moved_alias_and_skips_a_version_that_does_not_load(
        tmp_path, clip_tower, isolated_mlflow):
    import logging

    import mlflow

    from pipelines.serving.watcher import AliasWatcher
    from pipelines.tracking.registry import register_model

    cfg = tracked_config(tmp_path, weights=clip_tower[1])
    mlflow.set_tracking_uri(cfg.run.tracking_uri)
    for seed in (1, 2):
        checkpoint = save_model(tmp_path / f"v{seed}", perturbed(build_model(cfg.model), seed),
                                cfg, CLASSES)
        register_model(checkpoint, "alpha", "champion" if seed == 1 else None, cfg=cfg)
    client = MlflowClient()
    with mlflow.start_run() as run:                   # version 3: not an aim-video model at all
        mlflow.log_text("not a model", "notes/readme.txt")
    client.create_model_version("alpha", f"{run.info.artifact_uri}/notes", run.info.run_id)

    pool = ModelPool("cpu")
    ref = ServedRef("alpha", alias="champion")
    models = {"alpha": pool.load(ref, "1")}
    watcher = AliasWatcher(pool, models, interval_s=3600)
    said: list[str] = []
    recorder = logging.Handler(logging.INFO)
    recorder.emit = lambda record: said.append(record.getMessage())
    serve_log = logging.getLogger("ray.serve")         # where a replica's Serve log comes from
    level = serve_log.level
    serve_log.setLevel(logging.INFO)
    serve_log.addHandler(recorder)
    try:
        assert watcher.poll() == []
        client.set_registered_model_alias("alpha", "champion", "3")
        assert watcher.poll() == [] and watcher.poll() == []
        assert models["alpha"].version == "1"         # the old version goes on serving
        old = models["alpha"]
        client.set_registered_model_alias("alpha", "champion", "2")
        assert watcher.poll() == ["alpha"] and models["alpha"].version == "2"
    finally:
        serve_log.removeHandler(recorder)
        serve_log.setLevel(level)
    assert sum("version 3 does not load, still serving version 1" in m for m in said) == 1
    assert "models:/alpha@champion: version 1 -> 2" in said
    assert shared_with({"old": old.model, "new": models["alpha"].model})["new"] == ["old"]


# ----------------------------------------------------------------------------------------------
# A real Serve application over HTTP (one per module, reused by every test below)
# ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The running application: its URL, its Ray session and the registry it reads."""

    def __init__(self, url: str, session: str, cfg: Config, videos: dict[str, Path]) -> None:
        self.url, self.session, self.cfg, self.videos = url, session, cfg, videos

    def predict(self, name: str, video: str, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v1/models/{name}:predict",
                             data=self.videos[video].read_bytes(),
                             headers={"Content-Type": "video/mp4"}, timeout=120, **kwargs)

    def listing(self) -> dict:
        return requests.get(f"{self.url}/v1/models", timeout=60).json()


@pytest.fixture(scope="module")
def registered(tmp_path_factory, clip_tower):
    """A sqlite registry: alpha v1 (@champion) and v2, beta v1 (@champion), all three trained
    differently over the same backbone file."""
    from pipelines.tracking.registry import register_model

    tmp = tmp_path_factory.mktemp("registry")
    cfg = tracked_config(tmp, weights=clip_tower[1])
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.run.tracking_uri
    for name, seed, alias in (("alpha", 1, "champion"), ("beta", 2, "champion"),
                              ("alpha", 3, None)):
        model = perturbed(build_model(cfg.model), seed)
        checkpoint = save_model(tmp / f"{name}-{seed}", model, cfg, CLASSES)
        register_model(checkpoint, name, alias, cfg=cfg)
    yield cfg
    import mlflow

    mlflow.set_tracking_uri(None)
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.mark.slow
def test_the_serve_command_serves_until_sigterm_and_leaves_no_process(registered, videos,
                                                                      tmp_path):
    from pipelines.runtime import session_processes

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(MLFLOW_TRACKING_URI=registered.run.tracking_uri,
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pipelines.cli", "serve", "models:/beta@champion",
               "--port", str(port)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    printed = []
    while not printed or "Ctrl-C stops" not in printed[-1]:
        printed.append(lines.get(timeout=240))
    try:
        url = f"http://127.0.0.1:{port}"
        assert f"GET  {url}/v1/models" in "".join(printed)
        answer = requests.post(f"{url}/v1/models/beta:predict", timeout=60,
                               data=videos["forward"].read_bytes())
        assert answer.status_code == 200 and answer.json()["version"] == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    assert "stopping" in lines.get(timeout=10)
    session = printed[-1].split("replica logs: ", 1)[1].split("/logs/serve", 1)[0]
    assert session_processes(session) == []


@pytest.fixture(scope="module")
def app(registered, videos):
    import ray
    from ray import serve

    from pipelines.serving.launch import serve_app

    context = ray.init(address="local", num_cpus=2, include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=False)
    settings = ServeConfig.from_dict({
        "port": free_port(), "replica_cpus": 0.5, "alias_poll_s": 1.0, "max_batch_size": 4,
        "batch_wait_s": 0.05, "max_upload_bytes": 200_000,
        "allowed_uri_prefixes": [str(videos["forward"].parent)]})
    url = serve_app([ServedRef("alpha", alias="champion"), ServedRef("beta", alias="champion")],
                    settings, registered.run.tracking_uri)
    yield Served(url, context.address_info["session_dir"], registered, videos)
    serve.shutdown()
    ray.shutdown()


def local_prediction(uri: str, path: Path) -> list[tuple[str, float]]:
    """What ``aim-video predict VIDEO --model URI`` prints, at full precision."""
    from pipelines.tracking.references import resolve_model

    model, cfg, names = resolve_model(uri)
    (prediction,) = predict_videos(model, cfg, names, [path], topk=5)
    return prediction.top


def served_top(answer: dict) -> list[tuple[str, float]]:
    return [(row["class"], row["probability"]) for row in answer["top"]]


def assert_same_top(served: list, local: list) -> None:
    assert [c for c, _ in served] == [c for c, _ in local]
    assert [p for _, p in served] == pytest.approx([p for _, p in local], rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_served_probabilities_equal_predicts_and_say_version_and_views(app):
    for name in ("alpha", "beta"):
        for video in ("forward", "backward"):
            answer = app.predict(name, video)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["model"], body["version"], body["alias"]) == (name, "1", "champion")
            assert body["views"]["count"] == 2 and body["views"]["clips"] == 2
            assert_same_top(served_top(body), local_prediction(f"models:/{name}/1",
                                                               app.videos[video]))
    alpha, beta = app.predict("alpha", "forward").json(), app.predict("beta", "forward").json()
    assert served_top(alpha) != served_top(beta)      # one backbone, each its own answer
    three = requests.post(f"{app.url}/v1/models/alpha:predict?topk=3", timeout=60,
                          data=app.videos["forward"].read_bytes())
    assert len(three.json()["top"]) == 3


@pytest.mark.slow
def test_concurrent_callers_get_the_answers_they_get_alone(app):
    alone = {video: served_top(app.predict("alpha", video).json())
             for video in ("forward", "backward")}
    jobs = [("alpha" if i % 3 else "beta", ("forward", "backward")[i % 2]) for i in range(12)]
    with ThreadPoolExecutor(12) as clients:
        answers = list(clients.map(lambda job: app.predict(*job), jobs))
    for (name, video), answer in zip(jobs, answers):
        assert answer.status_code == 200, answer.text
        if name == "alpha":
            assert_same_top(served_top(answer.json()), alone[video])


@pytest.mark.slow
def test_two_models_on_one_backbone_hold_one_copy_of_it_in_the_replica(app):
    listing = app.listing()
    rows = {row["name"]: row for row in listing["models"]}
    assert rows["alpha"]["shares_backbone_with"] == ["beta"]
    assert rows["beta"]["shares_backbone_with"] == ["alpha"]
    assert rows["alpha"]["backbone"]["sha256"] == rows["beta"]["backbone"]["sha256"] is not None
    assert rows["alpha"]["version"] == "1" and rows["alpha"]["alias"] == "champion"
    model = build_model(app.cfg.model)
    frozen = sum(t.nbytes for t in frozen_tensors(model).values())
    tunable = sum(t.nbytes for t in model.tunable_state_dict().values())
    assert rows["alpha"]["tunable_parameters"] == tunable // 4
    memory = listing["memory"]
    assert memory["weight_bytes"] == frozen + 2 * tunable      # every frozen tensor held once
    assert memory["separate_bytes"] == 2 * (frozen + tunable)


def _chunked(data: bytes):
    for start in range(0, len(data), 50_000):
        yield data[start:start + 50_000]


@pytest.mark.slow
def test_bad_requests_get_their_4xx_and_the_replica_keeps_serving(app):
    url, folder = app.url, app.videos["forward"].parent
    predict = f"{url}/v1/models/alpha:predict"
    cases = [
        (requests.post(predict, data=app.videos["text"].read_bytes()), 422, "not a readable video"),
        (requests.post(predict, data=app.videos["truncated"].read_bytes()), 422,
         "not a readable video"),
        (requests.post(predict, data=b""), 400, "empty request body"),
        (requests.post(predict, data=os.urandom(300_000)), 413, "serve.max_upload_bytes"),
        (requests.post(predict, data=_chunked(os.urandom(300_000))), 413,
         "serve.max_upload_bytes"),
        (requests.post(f"{url}/v1/models/gamma:predict", data=b"x"), 404, "no model 'gamma'"),
        (requests.post(predict, json={"uri": "/etc/hostname"}), 403, "may not read"),
        (requests.post(predict, json={"uri": f"{folder}/../escape.mp4"}), 403, "may not read"),
        (requests.post(predict, json={"uri": f"{folder}/gone.mp4"}), 404, "no such file"),
        (requests.post(f"{predict}?topk=0", data=b"x"), 400, "topk: expected a positive"),
    ]
    for answer, status, reason in cases:
        assert answer.status_code == status, answer.text
        assert reason in answer.json()["error"]
        assert app.predict("alpha", "forward").status_code == 200
    by_uri = requests.post(predict, json={"uri": str(app.videos["backward"])}, timeout=60)
    assert by_uri.status_code == 200, by_uri.text
    assert served_top(by_uri.json()) == served_top(app.predict("alpha", "backward").json())


@pytest.mark.slow
def test_a_decode_over_its_time_limit_is_a_422_and_the_replica_keeps_serving(app):
    from pipelines.serving.launch import serve_app

    settings = ServeConfig.from_dict({"port": int(app.url.rsplit(":", 1)[1]),
                                      "replica_cpus": 0.5, "decode_timeout_s": 1e-6})
    url = serve_app([ServedRef("beta", version="1")], settings, app.cfg.run.tracking_uri,
                    name="tight", route_prefix="/tight")
    answer = requests.post(f"{url}/v1/models/beta:predict", timeout=60,
                           data=app.videos["forward"].read_bytes())
    assert answer.status_code == 422 and "serve.decode_timeout_s" in answer.json()["error"]
    assert requests.get(f"{url}/v1/models", timeout=60).json()["models"][0]["version"] == "1"
    assert app.predict("beta", "forward").status_code == 200


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_the_server_listens_on_loopback_only_by_default(app):
    from pipelines.runtime import session_processes

    from .test_runtime import listening_addresses

    port = int(app.url.rsplit(":", 1)[1])
    listening = listening_addresses(session_processes(app.session))
    assert ("127.0.0.1", port) in listening
    exposed = [(ip, p) for ip, p in listening if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


@pytest.mark.slow
def test_an_alias_moved_in_the_registry_is_served_after_a_poll(app):
    before = app.predict("alpha", "forward").json()
    MlflowClient().set_registered_model_alias("alpha", "champion", "2")
    deadline = time.monotonic() + 60
    while app.listing()["models"][0]["version"] != "2" and time.monotonic() < deadline:
        time.sleep(0.5)
    after = app.predict("alpha", "forward").json()
    assert (before["version"], after["version"]) == ("1", "2")
    assert_same_top(served_top(after), local_prediction("models:/alpha/2", app.videos["forward"]))
    assert app.listing()["memory"]["weight_bytes"] < app.listing()["memory"]["separate_bytes"]
    logs = Path(app.session, "logs", "serve").glob("replica_*.log")
    assert any("models:/alpha@champion: version 1 -> 2" in log.read_text() for log in logs)
