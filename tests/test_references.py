"""``--model REF``: every way a person names a trained model resolves, and a wrong one says what is
there (real checkpoints written by ``save_model``, a real sqlite MLflow store)."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from aim_core.backbones import build_model
from aim_core.checkpoint import MODEL_FILE, save_model
from pipelines.cli import main
from pipelines.tracking import runs
from pipelines.tracking.references import ModelReferenceError, resolve_model, source_run_id

from .modeltools import CLASSES, clips, tracked_config, trained_like


@pytest.fixture(autouse=True)
def _mlflow_isolated(isolated_mlflow):
    yield


def _run_folder(tmp_path, scores: list[float | None]):
    """A training run's folder as Ray Train leaves it: checkpoint_* folders with model.pt and,
    for evaluated epochs, the evaluation; returns the folder and the models by checkpoint."""
    cfg = tracked_config(tmp_path)
    folder, models = tmp_path / "runs" / "r1", {}
    for i, score in enumerate(scores):
        torch.manual_seed(i)
        model = trained_like(build_model(cfg.model))
        checkpoint = folder / f"checkpoint_{i:06d}"
        save_model(checkpoint, model, cfg, CLASSES)
        if score is not None:
            (checkpoint / "eval.json").write_text(json.dumps({"top1": score}))
        models[checkpoint.name] = model
    return folder, models


def _same(a, b) -> bool:
    x = clips(batch=2)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_a_run_folder_gives_its_best_evaluated_checkpoint_and_says_so(tmp_path, capsys):
    folder, models = _run_folder(tmp_path, [0.4, 0.9, None])
    model, _, names = resolve_model(folder)
    assert names == CLASSES and _same(model, models["checkpoint_000001"])
    said = capsys.readouterr().out
    assert "using checkpoint_000001" in said and "best evaluated" in said and "90.0%" in said


def test_a_run_folder_without_evaluations_gives_its_latest_checkpoint(tmp_path, capsys):
    folder, models = _run_folder(tmp_path, [None, None])
    model, _, _ = resolve_model(folder)
    assert _same(model, models["checkpoint_000001"])
    assert "using checkpoint_000001" in capsys.readouterr().out


def test_wrong_references_say_what_was_found(tmp_path):
    (tmp_path / "notes.json").write_text('{"top1": 0.5}')
    with pytest.raises(ModelReferenceError, match="notes.json is not a model: it holds JSON"):
        resolve_model(tmp_path / "notes.json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ModelReferenceError, match=r"no model.pt and no checkpoint_\* folders "
                                                  r"with one \(found: readme.txt\)"):
        resolve_model(tmp_path / "empty")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelReferenceError, match="neither an aim-video nor a released AIM"):
        resolve_model(tmp_path / "other.pt")
    with pytest.raises(ModelReferenceError, match="models:/NAME@ALIAS"):
        resolve_model(tmp_path / "nothing-here")


def test_the_cli_turns_a_wrong_reference_into_one_line_and_status_2(tmp_path, capsys):
    (tmp_path / "notes.json").write_text("{}")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    assert main(["predict", str(video), "--model", str(tmp_path / "notes.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.json is not a model" in err[0]


def _run_logging_a_checkpoint(tmp_path, whole_folder: bool) -> tuple[torch.nn.Module, str]:
    """A trained-like model saved and logged to a new MLflow run as ``checkpoint``: the folder's
    files, or the model file alone."""
    cfg = tracked_config(tmp_path)
    model = trained_like(build_model(cfg.model))
    save_model(tmp_path / "ckpt", model, cfg, CLASSES)
    with runs.start_run(cfg) as run:
        if whole_folder:
            mlflow.log_artifacts(str(tmp_path / "ckpt"), "checkpoint")
        else:
            mlflow.log_artifact(str(tmp_path / "ckpt" / MODEL_FILE), "checkpoint")
    return model, run.info.run_id


@pytest.mark.slow
def test_an_mlflow_run_id_gives_the_checkpoint_that_run_logged(tmp_path):
    model, run_id = _run_logging_a_checkpoint(tmp_path, whole_folder=False)
    loaded, _, names = resolve_model(run_id)
    assert names == CLASSES and _same(loaded, model)


@pytest.mark.slow
def test_runs_uri_of_a_logged_checkpoint_folder_resolves(tmp_path):
    model, run_id = _run_logging_a_checkpoint(tmp_path, whole_folder=True)
    loaded, _, names = resolve_model(f"runs:/{run_id}/checkpoint")
    assert names == CLASSES and _same(loaded, model)
    assert source_run_id(f"runs:/{run_id}/checkpoint") == run_id


@pytest.mark.parametrize("classes,width,frames,views", [
    (400, 768, 8, ("dense", 16, 3, 1)), (700, 768, 8, ("dense", 16, 3, 3)),
    (400, 1024, 32, ("dense", 4, 3, 1)), (174, 768, 8, ("uniform", 16, 1, 3)),
    (48, 768, 8, ("uniform", 16, 1, 3)), (48, 1024, 8, ("uniform", 16, 1, 1)),
])
def test_released_checkpoints_are_tested_as_their_configs_say(classes, width, frames, views):
    from aim_core.config import DataConfig
    from pipelines.tracking.references import released_test_views

    data = DataConfig(**released_test_views(classes, width, frames))
    assert (data.sampler, data.frame_interval, data.test_clips, data.test_crops) == views
