"""The Model Registry round trip: register, look up by alias/version/run, load back bit-identically
and offline (sqlite store in tmp_path, never the repo)."""

from __future__ import annotations

import shutil

import mlflow
import numpy as np
import open_clip.model
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aim_core.backbones import build_model
from aim_core.checkpoint import ModelFileError, save_model
from pipelines.tracking import references, registry, runs

from .modeltools import CLASSES, clips, tracked_config, trained_like


@pytest.fixture(autouse=True)
def _mlflow_isolated(isolated_mlflow):
    yield


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



@pytest.mark.slow
def test_registered_model_loads_back_identically_and_offline(tmp_path, clip_weights):
    cfg = tracked_config(tmp_path, weights=clip_weights)
    model = trained_like(build_model(cfg.model))
    checkpoint = save_model(tmp_path / "ckpt", model, cfg, CLASSES)
    x = clips(batch=3)
    with torch.no_grad():
        expected = model(x)

    with runs.start_run(cfg, run_name="train") as run:
        version = registry.register_model(checkpoint, "tiny-aim", alias="champion",
                                          run_id=run.info.run_id)
    assert str(version.version) == "1" and version.run_id == run.info.run_id
    # The backbone file travels with the model: loading needs neither it nor a network.
    shutil.move(clip_weights, tmp_path / "elsewhere.pt")

    loaded, loaded_cfg, names = references.resolve_model("models:/tiny-aim@champion")
    assert names == CLASSES
    assert loaded_cfg.model == cfg.model          # the config as trained, backbone path included
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
    by_version, _, _ = references.resolve_model("models:/tiny-aim/1")
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
    assert references.source_run_id("models:/tiny-aim@champion") == run.info.run_id


@pytest.mark.slow
def test_a_new_version_takes_over_the_alias(tmp_path):
    cfg = tracked_config(tmp_path)  # random backbone: the checkpoint holds every weight
    first = save_model(tmp_path / "a", build_model(cfg.model).eval(), cfg, CLASSES)
    second = save_model(tmp_path / "b", trained_like(build_model(cfg.model)), cfg, CLASSES)
    registry.register_model(first, "tiny-random")      # no run given: a register-* run is made
    v2 = registry.register_model(second, "tiny-random")
    client = MlflowClient()
    assert client.get_model_version_by_alias("tiny-random", "champion").version == v2.version
    assert client.get_run(v2.run_id).info.run_name == "register-tiny-random"
    loaded, _, _ = references.resolve_model("models:/tiny-random@champion")
    reference, _, _ = references.resolve_model(second)    # a local checkpoint resolves as well
    x = clips(batch=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x), rtol=0, atol=0)


LEGACY_ENTRY = """\
import mlflow
from pipelines.registry import AimVideoPyfunc

mlflow.models.set_model(AimVideoPyfunc())
"""


@pytest.mark.slow
def test_a_model_registered_before_the_stage_packages_still_loads(tmp_path):
    """Versions registered earlier carry an entry script importing ``pipelines.registry``."""
    cfg = tracked_config(tmp_path)
    model = trained_like(build_model(cfg.model))
    checkpoint = save_model(tmp_path / "ckpt", model, cfg, CLASSES)
    entry = tmp_path / "aim_video_model.py"
    entry.write_text(LEGACY_ENTRY)
    runs.configure(cfg)
    with runs.start_run(cfg):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(entry),
                                       artifacts={"model": str(checkpoint)})
    x = clips(batch=2)
    probs = mlflow.pyfunc.load_model(info.model_uri).predict(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(probs, model(x).softmax(-1).numpy(), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pointer", ["absolute", "relative", "link"])
def test_a_registered_model_whose_files_lead_outside_its_folder_is_refused(tmp_path, pointer):
    """A tampered ``MLmodel`` (or a link inside the model folder) must not make the registry
    load some other checkpoint on the machine."""
    cfg = tracked_config(tmp_path)
    registry.register_model(save_model(tmp_path / "ckpt", build_model(cfg.model).eval(), cfg,
                                       CLASSES), "tiny-tampered")
    elsewhere = save_model(tmp_path / "elsewhere", trained_like(build_model(cfg.model)), cfg,
                           CLASSES)
    (mlmodel,) = (tmp_path / "mlartifacts").rglob("MLmodel")
    spec = yaml.safe_load(mlmodel.read_text())
    arts = spec["flavors"]["python_function"]["artifacts"]
    if pointer == "link":
        stored = mlmodel.parent / arts["model"]["path"]
        stored.unlink()
        stored.symlink_to(elsewhere)
    else:
        arts["model"]["path"] = (str(elsewhere) if pointer == "absolute"
                                 else "../" * 12 + str(elsewhere).lstrip("/"))
        mlmodel.write_text(yaml.safe_dump(spec))

    # MLflow's own download refuses the link; our loader refuses the paths.
    error, message = ((MlflowException, "resolved path is outside the artifact directory")
                      if pointer == "link" else
                      (ModelFileError, r"artifact 'model' .* leads outside the downloaded model"))
    with pytest.raises(error, match=message):
        references.resolve_model("models:/tiny-tampered@champion")
