"""The Model Registry: our checkpoint format behind an MLflow pyfunc, and loading any model reference.

Models are registered in our own checkpoint format, not pickled modules and not ``torch.export``
graphs: a ``mlflow.pyfunc`` model whose artifacts are ``model.pt`` (config + tunable weights +
backbone identity, loaded with ``weights_only=True``) and, when the backbone came from a local file,
that file too, so the registered model loads offline. :class:`AimVideoPyfunc` serves it to generic
MLflow tooling; :func:`resolve_model` loads it back as our own :class:`VideoClassifier` without
unpickling anything, and only from files inside the downloaded model folder, whatever a tampered
``MLmodel`` file says.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from aim_core.backbones import BackboneError, BackboneIdentity
from aim_core.checkpoint import MODEL_FILE, ModelFileError, load_model, read_model_file
from aim_core.config import Config, DataConfig, ModelConfig
from aim_core.model import VideoClassifier

from .tracking import configure, start_run

MODEL_ARTIFACT = "model"          # name of the logged pyfunc model inside a run

LoadedModel = tuple[VideoClassifier, Config, "list[str] | None"]


class AimVideoPyfunc(mlflow.pyfunc.PythonModel):
    """Generic MLflow serving of an aim-video checkpoint.

    Input: float32 ``(B, 3, T, H, W)`` clips, CLIP-normalised (one row per view). Output: float32
    ``(B, num_classes)`` class probabilities. Logged as code (a three-line entry script that
    imports this class), not pickled, so it needs aim-video installed where it is loaded; the
    weights come from ``model.pt`` with ``weights_only=True``.
    """

    def load_context(self, context: Any) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.cfg, self.class_names = load_model(
            context.artifacts["model"], backbone_file=context.artifacts.get("backbone"),
            device=self.device)

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
                ) -> np.ndarray:
        if isinstance(model_input, Mapping):  # a named-input request: {"clips": array}
            (model_input,) = model_input.values()
        clips = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        batch = max(1, self.cfg.optim.per_device_batch)
        with torch.no_grad():
            probs = [self.model(part.to(self.device)).float().softmax(dim=-1).cpu()
                     for part in clips.split(batch)]
        return torch.cat(probs).numpy()


_PYFUNC_ENTRY = """\
# Loaded by mlflow.pyfunc.load_model (models-from-code); needs aim-video installed.
import mlflow
from pipelines.registry import AimVideoPyfunc

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
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version.version)
    return version


# ----------------------------------------------------------------------------------------------
# Loading any model reference
# ----------------------------------------------------------------------------------------------

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def is_mlflow_uri(ref: str) -> bool:
    return str(ref).startswith(("models:/", "runs:/"))


def source_run_id(uri: str) -> str | None:
    """The MLflow run a ``models:/`` or ``runs:/`` reference was logged in (None for files)."""
    uri = str(uri)
    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].split("/", 1)[0] or None
    match = _MODELS_URI.match(uri)
    if match is None:
        return None
    client = MlflowClient()
    if match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"]).run_id
    return client.get_model_version(match["name"], match["version"]).run_id


def resolve_model(ref: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """``(model, config, class_names)`` from any way of naming a trained model.

    - ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/path``: downloaded from the
      tracking store MLflow is configured for (see :func:`configure`) and loaded from our
      checkpoint format, never by unpickling the pyfunc wrapper;
    - a checkpoint folder or ``model.pt``;
    - a released official AIM ``.pth`` (test views then follow the paper: 3x1 dense for Kinetics,
      1x3 uniform for SSv2's 174 classes, 1x1 uniform for Diving-48's 48).
    Returns ``class_names=None`` when the checkpoint has none (official ones).
    """
    ref = str(ref)
    if is_mlflow_uri(ref):
        with tempfile.TemporaryDirectory(prefix="aim-video-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp))
            return _load_downloaded(local, device)
    path = Path(ref).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no model at {ref} (expected models:/NAME@ALIAS, runs:/..., a "
                                f"checkpoint folder/model.pt, or an official AIM .pth)")
    if path.is_dir() or path.suffix == ".pt":
        try:
            return load_model(path, device=device)
        except ModelFileError:
            if path.is_dir() or not _is_official(path):
                raise
    return _load_official(path, device)


def _load_downloaded(local: Path, device: str | torch.device) -> LoadedModel:
    """Load a downloaded pyfunc model folder (MLmodel) or a folder/file holding model.pt."""
    mlmodel = local / "MLmodel" if local.is_dir() else None
    if mlmodel is not None and mlmodel.is_file():
        spec = yaml.safe_load(mlmodel.read_text())
        arts = (spec.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        if "model" not in arts:
            raise ModelFileError(f"{local}: an MLflow model, but not an aim-video one (no 'model' "
                                 f"artifact)")
        ckpt = _inside(local, arts["model"]["path"], "model")
        backbone = (_inside(local, arts["backbone"]["path"], "backbone")
                    if "backbone" in arts else None)
    else:
        found = [local] if local.is_file() else sorted(local.rglob(MODEL_FILE))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one {MODEL_FILE} in the downloaded artifacts, "
                                    f"found {len(found)}")
        ckpt, backbone = _inside(local, str(found[0]), MODEL_FILE), None
    model, cfg, class_names = load_model(ckpt, backbone_file=backbone, device=device)
    if backbone is not None:  # the download is temporary: describe the model as it was trained
        identity = read_model_file(ckpt)["backbone"]
        cfg.model.backbone.pretrained = identity["pretrained"]
        model.backbone_identity = BackboneIdentity(**identity)
    return model, cfg, class_names


def _inside(folder: Path, rel: str, artifact: str) -> Path:
    """``rel`` under the downloaded ``folder``, resolved (links included), which must stay inside
    it: an ``MLmodel`` can name any path, and would otherwise load any checkpoint on disk."""
    base = folder.resolve() if folder.is_dir() else folder.parent.resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ModelFileError(f"{folder}: artifact {artifact!r} ({rel}) leads outside the "
                             f"downloaded model folder; refusing to load it")
    return path


def _is_official(path: Path) -> bool:
    from aim_core.official import read_official_state

    try:
        read_official_state(path)
        return True
    except ModelFileError:
        return False


def _load_official(path: Path, device: str | torch.device) -> LoadedModel:
    from aim_core.official import load_official_checkpoint

    model = load_official_checkpoint(path).to(device).eval()
    m = model.cfg
    if m.num_classes in (174, 48):      # SSv2 / Diving-48 recipes: uniform segments
        data = DataConfig(sampler="uniform", test_clips=1, test_crops=3 if m.num_classes == 174
                          else 1, horizontal_flip=False)
    else:                               # Kinetics: dense 8x16 / 16x8 / 32x4, 3 clips x 1 crop
        data = DataConfig(sampler="dense", frame_interval=max(1, 128 // m.num_frames),
                          test_clips=3, test_crops=1)
    return model, Config(model=m, data=data).validate(), None
