"""MLflow tracking, plots and the registry round trip (sqlite store in tmp_path, never the repo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import mlflow
import numpy as np
import open_clip.model
import pytest
import torch
from mlflow import MlflowClient

from aim_core.accounting import ModelCost
from aim_core.backbones import build_model
from aim_core.checkpoint import save_model
from aim_core.config import (AdapterConfig, BackboneConfig, Config, DataConfig, ModelConfig,
                             OptimConfig, RunConfig)
from pipelines import tracking

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _mlflow_isolated(isolated_mlflow):
    yield

CLASSES = ["left", "right", "up", "down", "grow"]


def tiny_config(tmp_path: Path, weights: str | None = None) -> Config:
    """A 3-block width-64 ViT on 4 frames of 32x32, tracked in ``tmp_path/mlflow.db``."""
    return Config(
        model=ModelConfig(
            backbone=BackboneConfig(source="tiny", name="tiny", pretrained=weights, width=64,
                                    layers=3, heads=4, patch_size=8, act="quick_gelu"),
            adapter=AdapterConfig(), num_classes=len(CLASSES), num_frames=4, image_size=32,
            drop_path=0.0, head_dropout=0.0),
        data=DataConfig(root=str(tmp_path / "videos"), test_clips=2, test_crops=1,
                        frame_interval=2, short_side=32, horizontal_flip=False),
        optim=OptimConfig(epochs=2, warmup_epochs=0, per_device_batch=4),
        run=RunConfig(name="t", mlflow_experiment="aim-test",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    ).validate()


@pytest.fixture
def clip_weights(tmp_path) -> str:
    """A real open_clip vision tower (random weights) saved as an open_clip-style weights file."""
    torch.manual_seed(0)
    tower = open_clip.model.VisionTransformer(
        image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=4.0, output_dim=32,
        act_layer=open_clip.model.QuickGELU)
    path = tmp_path / "weights" / "tiny_clip.pt"
    path.parent.mkdir()
    torch.save({"state_dict": {f"visual.{k}": v for k, v in tower.state_dict().items()}}, path)
    return str(path)


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Move the tunable weights away from their init so outputs depend on every one of them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.tunable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def clips(cfg: Config, batch: int = 3) -> torch.Tensor:
    m = cfg.model
    return torch.randn(batch, 3, m.num_frames, m.image_size, m.image_size,
                       generator=torch.Generator().manual_seed(0))


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert min(image.shape[:2]) >= min_side
    assert image[..., :3].std() > 0.05, "the image is (nearly) blank"


# ----------------------------------------------------------------------------------------------
# Where tracking goes
# ----------------------------------------------------------------------------------------------

def test_tracking_uri_prefers_config_then_environment_then_the_local_sqlite_store(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = Config()
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking.tracking_uri(cfg) == "http://mlflow.internal:5000"
    cfg.run.tracking_uri = "sqlite:///sub/runs.db"  # relative: made absolute for every worker
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/sub/runs.db"
    assert tracking.pin_tracking_uri(Config()).run.tracking_uri == "http://mlflow.internal:5000"


def test_artifacts_of_a_sqlite_store_live_next_to_the_database():
    assert tracking.artifact_location("sqlite:////data/ml/mlflow.db") == \
        "file:///data/ml/mlartifacts"
    assert tracking.artifact_location("http://server:5000") is None


def test_config_is_flattened_to_dotted_params():
    params = tracking.flatten_config(Config())
    assert params["model.adapter.ratio"] == "0.25"
    assert params["optim.lr"] == "0.0003"
    assert params["model.adapter.adaptations"] == "['spatial', 'temporal', 'joint']"
    assert params["run.tracking_uri"] == "None"


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------

def test_training_curves_are_a_png_with_loss_accuracy_and_lr(tmp_path):
    history = [{"epoch": e, "train_loss": 1.5 / e, "val_loss": 1.6 / e, "val_top1": 0.2 * e,
                "val_top5": 0.3 + 0.1 * e, "lr": 3e-4 * (1 - e / 5)} for e in range(1, 5)]
    path = tracking.plot_curves(history, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    assert_png(path)
    as_columns = {k: [row[k] for row in history] for k in history[0]}
    assert_png(tracking.plot_curves(as_columns, tmp_path / "plots"))  # a folder: curves.png in it
    with pytest.raises(ValueError, match="no loss/accuracy/lr"):
        tracking.plot_curves([{"epoch": 1, "throughput": 3.0}], tmp_path)


def test_confusion_matrix_is_a_png(tmp_path):
    cm = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]  # a class without samples must not break it
    path = tracking.plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png")
    assert_png(path)
    assert_png(tracking.plot_confusion(np.eye(80, dtype=int) * 3))  # many classes, temp file
    with pytest.raises(ValueError, match="class names"):
        tracking.plot_confusion(cm, ["a", "b"], tmp_path)


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_records_config_tags_metrics_cost_and_plots(tmp_path):
    cfg = tiny_config(tmp_path)
    with tracking.start_run(cfg, run_name="trial-0") as run:
        tracking.log_model_cost(ModelCost(1000, 100, 0.5, 2))
        for epoch in range(3):
            tracking.log_epoch({"train_loss": 1.0 / (epoch + 1), "val_top1": 0.3 * epoch,
                                "per_class": [0.1, 0.2], "note": "skipped"}, epoch)
        tracking.log_figure(tracking.plot_curves({"train_loss": [1, 0.5]}, tmp_path))
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.run_name == "trial-0"
    assert stored.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert stored.data.params["model.backbone.source"] == "tiny"
    assert stored.data.tags["variant"] == "aim" and stored.data.tags["backbone"] == "tiny:tiny"
    assert stored.data.tags["dataset_root"] == cfg.data.root
    assert stored.data.metrics["cost/tunable_params"] == 100
    assert stored.data.metrics["cost/gflops_all_views"] == 1.0
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_top1")] == \
        pytest.approx([0.0, 0.3, 0.6])
    assert "per_class" not in stored.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]


@pytest.mark.slow
def test_a_failing_body_marks_the_run_failed_and_a_resumed_run_keeps_its_params(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(RuntimeError):
        with tracking.start_run(cfg, run_name="crashes") as run:
            raise RuntimeError("worker died")
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    with tracking.start_run(cfg, run_id=run.info.run_id) as resumed:  # a restarted worker
        tracking.log_epoch({"val_top1": 0.5}, 1)
    assert resumed.info.run_id == run.info.run_id
    assert client.get_run(run.info.run_id).data.metrics["val_top1"] == 0.5


@pytest.mark.slow
def test_nested_runs_point_at_their_parent(tmp_path):
    cfg = tiny_config(tmp_path)
    with tracking.start_run(cfg, run_name="sweep") as parent:
        with tracking.start_run(cfg, run_name="trial", nested=True) as child:
            pass
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.slow
def test_a_trial_in_another_process_nests_under_a_running_parent_by_id(tmp_path):
    cfg = tiny_config(tmp_path)
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    parent = client.create_run(tracking.experiment_id(cfg))  # running, but not active here
    with tracking.start_run(cfg, run_name="trial-1", nested=True,
                            parent_run_id=parent.info.run_id) as child:
        pass
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_registered_model_loads_back_identically_and_offline(tmp_path, clip_weights):
    cfg = tiny_config(tmp_path, weights=clip_weights)
    model = trained_like(build_model(cfg.model))
    checkpoint = save_model(tmp_path / "ckpt", model, cfg, CLASSES)
    x = clips(cfg)
    with torch.no_grad():
        expected = model(x)

    with tracking.start_run(cfg, run_name="train") as run:
        version = tracking.register_model(checkpoint, "tiny-aim", alias="champion",
                                          run_id=run.info.run_id)
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    # The backbone file travels with the model: loading needs neither it nor a network.
    shutil.move(clip_weights, tmp_path / "elsewhere.pt")

    loaded, loaded_cfg, names = tracking.resolve_model("models:/tiny-aim@champion")
    assert names == CLASSES
    assert loaded_cfg.model == cfg.model          # the config as trained, backbone path included
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    by_version, _, _ = tracking.resolve_model("models:/tiny-aim/1")
    with torch.no_grad():
        torch.testing.assert_close(by_version(x), expected, rtol=0, atol=0)

    pyfunc = mlflow.pyfunc.load_model("models:/tiny-aim@champion")
    probs = pyfunc.predict(x.numpy())
    assert probs.dtype == np.float32 and probs.shape == (3, len(CLASSES))
    np.testing.assert_array_equal(probs, expected.softmax(-1).numpy())

    inputs = pyfunc.metadata.get_input_schema().inputs[0]
    outputs = pyfunc.metadata.get_output_schema().inputs[0]
    assert inputs.shape == (-1, 3, 4, 32, 32) and inputs.type == np.dtype(np.float32)
    assert outputs.shape == (-1, len(CLASSES))
    assert tracking.source_run_id("models:/tiny-aim@champion") == run.info.run_id


@pytest.mark.slow
def test_a_new_version_takes_over_the_alias(tmp_path):
    cfg = tiny_config(tmp_path)  # random backbone: the checkpoint holds every weight
    first = save_model(tmp_path / "a", build_model(cfg.model).eval(), cfg, CLASSES)
    second = save_model(tmp_path / "b", trained_like(build_model(cfg.model)), cfg, CLASSES)
    tracking.register_model(first, "tiny-random")      # no run given: a register-* run is made
    v2 = tracking.register_model(second, "tiny-random")
    client = MlflowClient()
    assert client.get_model_version_by_alias("tiny-random", "champion").version == v2.version
    assert client.get_run(v2.run_id).info.run_name == "register-tiny-random"
    loaded, _, _ = tracking.resolve_model("models:/tiny-random@champion")
    reference, _, _ = tracking.resolve_model(second)    # a local checkpoint resolves as well
    x = clips(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


@pytest.mark.slow
def test_runs_uri_of_a_logged_checkpoint_folder_resolves(tmp_path):
    cfg = tiny_config(tmp_path)
    model = trained_like(build_model(cfg.model))
    save_model(tmp_path / "ckpt", model, cfg, CLASSES)
    with tracking.start_run(cfg) as run:
        mlflow.log_artifacts(str(tmp_path / "ckpt"), "checkpoint")
    loaded, _, names = tracking.resolve_model(f"runs:/{run.info.run_id}/checkpoint")
    assert names == CLASSES
    x = clips(cfg)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert tracking.source_run_id(f"runs:/{run.info.run_id}/checkpoint") == run.info.run_id


def test_missing_model_reference_says_what_is_accepted(tmp_path):
    with pytest.raises(FileNotFoundError, match="models:/NAME@ALIAS"):
        tracking.resolve_model(tmp_path / "nothing-here")
