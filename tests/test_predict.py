"""``aim-video predict`` and ``aim-video eval`` on real MP4 files (written with PyAV)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import videotools
from mlflow import MlflowClient

from aim_core.backbones import build_model
from aim_core.checkpoint import save_model
from aim_core.config import Config
from pipelines.tracking import references, registry, runs
from pipelines.cli import main
from aim_core.transforms import to_model_input
from pipelines.evaluation.evaluate import evaluate, load_views, predict_video
from pipelines.evaluation.predict import predict_videos

from .modeltools import CLASSES, tracked_config, trained_like
from .test_plots import PNG_SIGNATURE

RANKED_LINE = re.compile(r"^  (\d)\. (\S+)\s+(\d\.\d{4})$")


@pytest.fixture(autouse=True)
def _mlflow_isolated(isolated_mlflow):
    yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """``root/<class>/<video>.mp4``: two videos each of ``left`` and ``right`` (24 frames)."""
    root = tmp_path_factory.mktemp("data") / "videos"
    frames = videotools.index_frames(24, 48, 64)
    for name, clip in (("left", frames), ("right", frames[::-1])):
        (root / name).mkdir(parents=True)
        for k in range(2):
            videotools.write_video(root / name / f"{name}_{k}.mp4", clip[k:], gop=8)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_root) -> tuple[Path, Config]:
    """A tiny model (random backbone, so the checkpoint holds every weight) with class names."""
    tmp = tmp_path_factory.mktemp("model")
    cfg = tracked_config(tmp)
    cfg.data.root = str(data_root)
    cfg.data.test_crops = 3
    torch.manual_seed(0)
    model = trained_like(build_model(cfg.model))
    return save_model(tmp / "ckpt", model, cfg, CLASSES).parent, cfg


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not really a video" * 4)
    return path


def parse_predictions(text: str) -> dict[str, list[tuple[str, float]]]:
    """``{video path: [(class, probability), ...]}`` from predict's stdout."""
    out: dict[str, list[tuple[str, float]]] = {}
    current = None
    for line in text.splitlines():
        if match := RANKED_LINE.match(line):
            out[current].append((match[2], float(match[3])))
        elif line and not line.startswith(" "):
            current = line
            out[current] = []
    return out


def videos(root: Path) -> list[Path]:
    return sorted(root.rglob("*.mp4"))


# ----------------------------------------------------------------------------------------------
# Views and probabilities
# ----------------------------------------------------------------------------------------------

def test_a_video_gives_clips_times_crops_uint8_views_at_the_model_size(checkpoint, data_root):
    _, cfg = checkpoint
    views = load_views(videos(data_root)[0], cfg)
    assert views.shape == (2 * 3, 4, 32, 32, 3)     # 2 temporal clips x 3 crops
    assert views.dtype == torch.uint8               # normalised on the model's device


def test_video_probabilities_are_the_mean_softmax_over_its_views(checkpoint, data_root):
    ckpt, cfg = checkpoint
    model, _, _ = references.resolve_model(ckpt)
    path = videos(data_root)[0]
    with torch.no_grad():
        expected = model(to_model_input(load_views(path, cfg))).softmax(-1).mean(0)
    probs = predict_video(model, cfg, path)
    torch.testing.assert_close(probs, expected)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluation_predict_and_the_pyfunc_give_one_answer_per_precision(
        checkpoint, data_root, tmp_path, precision):
    """Training's evaluation (ingest-style rows), predict and the registry's pyfunc share one
    inference path: the same clip at the same precision gives the same probabilities."""
    import mlflow

    from aim_core.checkpoint import MODEL_FILE
    from aim_core.transforms import build_test_transform, to_model_input
    from aim_core.video import clip_indices, decode_frames
    from pipelines.evaluation.evaluate import score_rows

    ckpt, cfg = checkpoint
    model, _, _ = references.resolve_model(ckpt)
    cfg = cfg.with_overrides({"optim.precision": precision, "optim.eval_batch_size": 4})
    ckpt = save_model(tmp_path / precision, model, cfg, CLASSES).parent   # trained at precision
    path = videos(data_root)[0]

    predicted = predict_video(model, cfg, path)

    clips = clip_indices(cfg.data, 24, cfg.model.num_frames, train=False)
    frames = decode_frames(path, [i for c in clips for i in c], short_side=cfg.data.short_side)
    views = [build_test_transform(cfg.data, cfg.model.image_size)(clip).numpy()
             for clip in frames.reshape(len(clips), cfg.model.num_frames, *frames.shape[1:])]
    rows = [{"video_id": ["v"] * len(clips), "label": [0] * len(clips), "views": views}]
    scores = score_rows(model, cfg, rows)
    evaluated = torch.as_tensor(scores.sums["v"] / scores.views["v"])

    pyfunc = registry.AimVideoPyfunc()
    pyfunc.load_context(mlflow.pyfunc.PythonModelContext(
        artifacts={"model": str(ckpt / MODEL_FILE)}, model_config=None))
    normalised = to_model_input(load_views(path, cfg)).contiguous()   # the pyfunc's signature
    served = torch.as_tensor(pyfunc.predict(None, normalised.numpy())).mean(0)

    torch.testing.assert_close(evaluated, predicted, rtol=0, atol=1e-6)
    torch.testing.assert_close(served, predicted, rtol=0, atol=1e-6)
    if precision == "bf16":                           # the setting is honoured on the CPU too
        fp32 = predict_video(model, cfg.with_overrides({"optim.precision": "fp32"}), path)
        assert not torch.allclose(predicted, fp32, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# aim-video predict
# ----------------------------------------------------------------------------------------------

def test_predict_prints_the_top5_classes_of_each_video(checkpoint, data_root, capsys):
    ckpt, _ = checkpoint
    paths = [str(p) for p in videos(data_root)[:2]]
    assert main(["predict", *paths, "--model", str(ckpt)]) == 0
    printed = parse_predictions(capsys.readouterr().out)
    assert list(printed) == paths
    for top in printed.values():
        names, probs = zip(*top)
        assert len(top) == 5 and set(names) == set(CLASSES)
        assert list(probs) == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=5e-4)


def test_predict_reports_unreadable_files_and_still_predicts_the_others(
        checkpoint, data_root, broken, tmp_path, capsys):
    ckpt, _ = checkpoint
    good = [str(p) for p in videos(data_root)[:2]]
    missing = str(tmp_path / "missing.mp4")
    code = main(["predict", good[0], str(broken), missing, good[1], "--model", str(ckpt),
                 "--topk", "3"])
    captured = capsys.readouterr()
    assert code == 1
    printed = parse_predictions(captured.out)
    assert list(printed) == good and all(len(top) == 3 for top in printed.values())
    errors = [line for line in captured.err.splitlines() if ": error: " in line]
    assert [line.split(": error: ")[0] for line in errors] == [str(broken), missing]
    assert "2 of 4 video(s) could not be read" in captured.err


def test_predict_views_follow_overrides_of_the_model_config(checkpoint, data_root, capsys):
    ckpt, cfg = checkpoint
    path = str(videos(data_root)[0])
    assert main(["predict", path, "--model", str(ckpt), "--set", "data.test_clips=1",
                 "--set", "data.test_crops=1"]) == 0
    printed = parse_predictions(capsys.readouterr().out)[path]
    model, _, _ = references.resolve_model(ckpt)
    one_view = Config.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                           "test_clips": 1, "test_crops": 1}})
    (pred,) = predict_videos(model, one_view, CLASSES, [path])
    assert printed == [(name, round(p, 4)) for name, p in pred.top]


def test_predict_runs_a_released_official_checkpoint_with_a_labels_file(data_root, tmp_path,
                                                                          capsys):
    from .official_reference import OfficialAIM

    torch.manual_seed(0)
    official = OfficialAIM(size=32, frames=4, patch=8, d=128, layers=2, classes=7)
    torch.save({"state_dict": official.state_dict()}, tmp_path / "aim_k400.pth")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"action {i}\n" for i in range(7)))
    path = str(videos(data_root)[0])
    assert main(["predict", path, "--model", str(tmp_path / "aim_k400.pth"),
                 "--labels", str(labels), "--topk", "3"]) == 0
    assert "  1. action " in capsys.readouterr().out
    model, cfg, names = references.resolve_model(tmp_path / "aim_k400.pth")
    assert names is None and cfg.model.num_classes == 7
    assert (cfg.data.sampler, cfg.data.test_clips, cfg.data.test_crops) == ("dense", 3, 1)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def test_evaluation_scores_each_readable_video_once_and_lists_the_rest(checkpoint, data_root,
                                                                        broken):
    ckpt, cfg = checkpoint
    model, _, _ = references.resolve_model(ckpt)
    files = videos(data_root)
    labelled = [(str(p), CLASSES.index(p.parent.name)) for p in files] + [(str(broken), 0)]
    result = evaluate(model, cfg, labelled, CLASSES)
    assert result["num_videos"] == 4
    assert [path for path, _ in result["failed"]] == [str(broken)]
    predicted = [int(predict_video(model, cfg, p).argmax()) for p, _ in labelled[:4]]
    hits = sum(p == y for p, (_, y) in zip(predicted, labelled))
    assert result["top1"] == pytest.approx(hits / 4)
    assert sum(map(sum, result["confusion"])) == 4
    assert result["class_names"] == CLASSES
    assert result["views"] == {"clips": 2, "crops": 3}


def write_config(cfg: Config, path: Path) -> Path:
    path.write_text(cfg.to_yaml())
    return path


def test_eval_command_writes_metrics_and_confusion_plot(checkpoint, tmp_path, capsys):
    ckpt, cfg = checkpoint
    config = write_config(cfg, tmp_path / "eval.yaml")
    out = tmp_path / "report"
    assert main(["eval", str(config), "--model", str(ckpt), "--out", str(out),
                 "--set", "data.val_fraction=0.5"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"top-1 \d+\.\d\d%  top-5 \d+\.\d\d%  mean class \d+\.\d\d%  "
                     r"on 2 videos", text)
    report = json.loads((out / "eval.json").read_text())
    assert {"top1", "top5", "mean_class_acc", "per_class", "confusion",
            "class_names"} <= set(report)
    assert report["num_videos"] == 2 and report["class_names"] == CLASSES
    assert report["per_class"][2:] == [None, None, None]    # up / down / grow have no videos
    assert (out / "confusion.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_eval_of_a_registered_model_is_logged_to_its_run(checkpoint, tmp_path, capsys):
    ckpt, cfg = checkpoint
    cfg = Config.from_dict(cfg.to_dict())
    cfg.run.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with runs.start_run(cfg, run_name="train") as run:
        registry.register_model(ckpt, "tiny-eval", run_id=run.info.run_id, cfg=cfg)
    config = write_config(cfg, tmp_path / "eval.yaml")
    assert main(["eval", str(config), "--model", "models:/tiny-eval@champion",
                 "--out", str(tmp_path / "report")]) == 0
    assert f"logged to MLflow run {run.info.run_id}" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=cfg.run.tracking_uri)
    logged = client.get_run(run.info.run_id)
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert logged.data.metrics["eval_top1"] == pytest.approx(report["top1"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == \
        {"eval/eval.json", "eval/confusion.png"}


@pytest.mark.slow
def test_predict_resolves_a_registry_alias_from_the_environment(checkpoint, data_root, tmp_path,
                                                                monkeypatch, capsys):
    ckpt, cfg = checkpoint
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = Config.from_dict(cfg.to_dict())
    cfg.run.tracking_uri = uri
    registry.register_model(ckpt, "tiny-predict", cfg=cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    path = str(videos(data_root)[0])
    assert main(["predict", path, "--model", "models:/tiny-predict@champion"]) == 0
    from_registry = parse_predictions(capsys.readouterr().out)
    assert main(["predict", path, "--model", str(ckpt)]) == 0
    assert from_registry == parse_predictions(capsys.readouterr().out)


@pytest.mark.slow
def test_evaluation_over_ingested_ray_views_matches_local_decoding(checkpoint):
    import ray

    from aim_core.annotations import ClassMap, load_split
    from pipelines.data.clips import evaluation_dataset
    from pipelines.data.scan import read_videos

    ckpt, cfg = checkpoint
    model, _, _ = references.resolve_model(ckpt)
    records = load_split(cfg.data, "val", ClassMap(CLASSES)).records
    local = evaluate(model, cfg, records, CLASSES)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        videos, _, _ = read_videos(cfg, "val", ClassMap(CLASSES))
        distributed = evaluate(model, cfg, evaluation_dataset(cfg, videos), CLASSES)
    finally:
        ray.shutdown()
    assert distributed["num_videos"] == local["num_videos"] == len(records)
    assert distributed["confusion"] == local["confusion"]
    assert distributed["top5"] == local["top5"]
