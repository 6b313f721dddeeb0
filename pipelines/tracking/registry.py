"""The Model Registry: our checkpoint format behind an MLflow pyfunc.

Models are registered in our own checkpoint format, not pickled modules and not ``torch.export``
graphs: a ``mlflow.pyfunc`` model whose artifacts are ``model.pt`` (config + tunable weights +
backbone identity, loaded with ``weights_only=True``) and, when the backbone came from a local file,
that file too, so the registered model loads offline. :class:`AimVideoPyfunc` serves it to generic
MLflow tooling; :func:`pipelines.tracking.references.resolve_model` loads it back as our own
:class:`VideoClassifier` without unpickling anything.
"""

from __future__ import annotations

import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from aim_core.backbones import BackboneError, build_model
from aim_core.checkpoint import MODEL_FILE, load_model, read_model_file
from aim_core.config import Config, ModelConfig
from aim_core.inference import Inference, default_device
from aim_core.model import count_parameters

from pipelines.tracking.runs import configure, start_run

MODEL_ARTIFACT = "model"          # name of the logged pyfunc model inside a run

class AimVideoPyfunc(mlflow.pyfunc.PythonModel):
    """Generic MLflow serving of an aim-video checkpoint.

    Input: float32 ``(B, 3, T, H, W)`` clips, CLIP-normalised (one row per view). Output: float32
    ``(B, num_classes)`` class probabilities. Logged as code (a three-line entry script that
    imports this class), not pickled, so it needs aim-video installed where it is loaded; the
    weights come from ``model.pt`` with ``weights_only=True``.
    """

    def load_context(self, context: Any) -> None:
        self.model, self.cfg, self.class_names = load_model(
            context.artifacts["model"], backbone_file=context.artifacts.get("backbone"),
            device=default_device())
        self.inference = Inference.for_config(self.cfg)

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        if isinstance(model_input, Mapping):  # a named-input request: {"clips": array}
            (model_input,) = model_input.values()
        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        return self.inference.probabilities(self.model, clips).numpy()


_PYFUNC_ENTRY = """\
# Loaded by mlflow.pyfunc.load_model (models-from-code); needs aim-video installed.
import mlflow
from pipelines.tracking.registry import AimVideoPyfunc

mlflow.models.set_model(AimVideoPyfunc())
"""


def clip_signature(model_cfg: ModelConfig) -> ModelSignature:
    """Tensor signature ``(-1, 3, T, H, W) float32 -> (-1, num_classes) float32``."""
    m = model_cfg
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, m.num_frames, m.image_size,
                                                         m.image_size))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, m.num_classes))]))


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    try:
        reqs.append(f"aim-video=={version('aim-video')}")
    except PackageNotFoundError:
        pass
    return reqs


def _checkpoint_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path / MODEL_FILE if path.is_dir() else path


@contextmanager
def _run_for_logging(cfg: Config, run_id: str | None, name: str) -> Iterator[str]:
    """The run to log a model into: ``run_id``, else the active run, else a new one."""
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active.info.run_id
        return
    if run_id is not None:  # e.g. the training run, after (or while) its owner ran it
        status = MlflowClient().get_run(run_id).info.status
        mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            yield run_id
        finally:
            mlflow.end_run(status=status)  # leave the run as its owner left it
        return
    with start_run(cfg, run_name=f"register-{name}", nested=active is not None) as run:
        yield run.info.run_id


def register_model(checkpoint_path: str | Path, name: str, alias: str | None = "champion", *,
                   run_id: str | None = None, cfg: Config | None = None) -> ModelVersion:
    """Log ``checkpoint_path`` (our ``model.pt``, or its folder) as a pyfunc model and register it.

    The model goes into ``run_id`` (else the active run, else a new ``register-<name>`` run) of the
    tracking store that ``cfg`` (default: the checkpoint's own config) points at. A backbone loaded
    from a local file is packaged with it. ``alias`` (e.g. ``champion``) then points at the new
    version: ``models:/<name>@<alias>``. Returns the :class:`ModelVersion` (``.version``,
    ``.run_id``).
    """
    ckpt = _checkpoint_file(checkpoint_path)
    payload = read_model_file(ckpt)
    cfg = cfg or Config.from_dict(payload["config"])
    model_cfg = Config.from_dict(payload["config"]).model
    artifacts = {"model": str(ckpt)}
    identity = payload["backbone"]
    if not identity["random_init"] and identity.get("sha256") and identity.get("pretrained"):
        backbone = Path(identity["pretrained"]).expanduser()
        if not backbone.is_file():
            raise BackboneError(f"cannot package the backbone file {backbone} that {ckpt} was "
                                f"trained on: it is missing here")
        artifacts["backbone"] = str(backbone)
    configure(cfg)
    with _run_for_logging(cfg, run_id, name), tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "aim_video_model.py"   # models-from-code: nothing is pickled
        entry.write_text(_PYFUNC_ENTRY)
        with warnings.catch_warnings():  # no input example: a ViT-B one would be ~5 MB of JSON
            warnings.filterwarnings("ignore", message=".*input example.*")
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT, python_model=str(entry), artifacts=artifacts,
                signature=clip_signature(model_cfg), pip_requirements=_requirements(),
                metadata={"format": payload["format"], "class_names": payload["class_names"]})
    version = mlflow.register_model(info.model_uri, name)
    describe_version(version, payload, run_id=version.run_id)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version


# ----------------------------------------------------------------------------------------------
# What a version is, in MLflow itself (the UI's model page answers "which model is this")
# ----------------------------------------------------------------------------------------------

#: Run metrics copied onto the version as tags: tag -> run metric.
SCORE_TAGS = {"val_top1": "final_top1", "val_mean_class_acc": "final_mean_class_acc",
              "val_top5": "final_top5"}
#: Run tags copied onto the version: tag -> run tag (the test protocol, the data set's digest).
RUN_TAGS = {"test_views": "final_protocol", "dataset_digest": "dataset_digest"}


def version_card(payload: dict[str, Any], run: Any | None) -> tuple[str, dict[str, str]]:
    """The description and tags of a registered version: task, classes, backbone, recipe, scores."""
    cfg = Config.from_dict(payload["config"])
    m, o, names = cfg.model, cfg.optim, payload["class_names"] or []
    identity = payload["backbone"]
    backbone = f"{identity['source']}:{identity['name']}"
    _, tunable = count_parameters(build_model(m, device="meta"))
    variant = f"AIM ({'+'.join(m.adapter.adaptations)})" if m.variant == "aim" else m.variant
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    description = (f"{variant} video classifier of {m.num_classes} classes ({shown or 'unnamed'}), "
                   f"{m.num_frames} frames at {m.image_size}px, on the frozen {backbone} "
                   f"backbone (sha256 {identity.get('sha256') or 'n/a'}). Recipe: {o.epochs} "
                   f"epochs, lr {o.lr:g}, batch {o.batch_size}, {o.schedule}; data "
                   f"{cfg.data.format} at {cfg.data.root}.")
    tags = {"task": "video classification", "classes": str(m.num_classes),
            "variant": m.variant, "backbone": backbone,
            "backbone_sha256": identity.get("sha256") or "", "tunable_params": str(tunable)}
    if run is not None:
        tags.update({t: f"{run.data.metrics[k]:.4f}" for t, k in SCORE_TAGS.items()
                     if k in run.data.metrics})
        tags.update({t: run.data.tags[k] for t, k in RUN_TAGS.items() if k in run.data.tags})
    return description, tags


def describe_version(version: ModelVersion, payload: dict[str, Any],
                     run_id: str | None = None) -> None:
    client = MlflowClient()
    run = client.get_run(run_id) if run_id else None
    description, tags = version_card(payload, run)
    client.update_model_version(version.name, version.version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
