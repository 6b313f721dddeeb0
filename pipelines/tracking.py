"""MLflow runs, plots and the Model Registry for aim-video.

Embedded default (no server): tracking and registry in ``sqlite:///<abs cwd>/mlflow.db`` and
artifacts in ``<abs cwd>/mlartifacts``. MLflow itself would put artifacts in ``./mlruns``, relative
to whichever process logs them, so a Ray worker with another working directory would scatter them:
every experiment we create on a sqlite store gets an explicit absolute ``artifact_location`` next to
the database. Resolve the URI once on the driver (:func:`pin_tracking_uri`) before shipping the
config to workers, for the same reason.

Models are registered in our own checkpoint format, not pickled modules and not ``torch.export``
graphs: a ``mlflow.pyfunc`` model whose artifacts are ``model.pt`` (config + tunable weights +
backbone identity, loaded with ``weights_only=True``) and, when the backbone came from a local file,
that file too, so the registered model loads offline. :class:`AimVideoPyfunc` serves it to generic
MLflow tooling; :func:`resolve_model` loads it back as our own :class:`VideoClassifier` without
unpickling anything.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless everywhere (Ray workers, CI); we never open windows

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.types.schema import Schema, TensorSpec  # noqa: E402

from aim_core.accounting import ModelCost  # noqa: E402
from aim_core.backbones import BackboneError, BackboneIdentity  # noqa: E402
from aim_core.checkpoint import MODEL_FILE, load_model, read_model_file  # noqa: E402
from aim_core.config import Config, DataConfig, ModelConfig  # noqa: E402
from aim_core.model import VideoClassifier  # noqa: E402

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
MODEL_ARTIFACT = "model"          # name of the logged pyfunc model inside a run

LoadedModel = tuple[VideoClassifier, Config, "list[str] | None"]


# ----------------------------------------------------------------------------------------------
# Where tracking goes
# ----------------------------------------------------------------------------------------------

def tracking_uri(cfg: Config | None = None) -> str:
    """``cfg.run.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    Relative sqlite paths are made absolute, so every process agrees on the same database.
    """
    explicit = cfg.run.tracking_uri if cfg is not None else None
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / DB_FILE}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifact root of new experiments: ``<db dir>/mlartifacts`` on sqlite, else the server's."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / ARTIFACT_DIR).as_uri()
    return None


def pin_tracking_uri(cfg: Config) -> Config:
    """A copy of ``cfg`` whose ``run.tracking_uri`` is resolved here (call on the driver)."""
    return replace(cfg, run=replace(cfg.run, tracking_uri=tracking_uri(cfg)))


def configure(cfg: Config | None = None) -> str:
    """Point MLflow at :func:`tracking_uri`; returns it.

    The registry follows the tracking store unless ``$MLFLOW_REGISTRY_URI`` names another one.
    MLflow also exports the URI as ``$MLFLOW_TRACKING_URI``, so subprocesses started afterwards
    inherit it.
    """
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(cfg: Config) -> str:
    """The id of ``cfg.run.mlflow_experiment``, created with an absolute artifact location."""
    uri = configure(cfg)
    name = cfg.run.mlflow_experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location(uri))
    except MlflowException:  # another worker created it first
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

def flatten_config(cfg: Config) -> dict[str, str]:
    """Dotted keys (``model.adapter.ratio``) to string values, as MLflow params hold them."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            out[prefix] = str(node)

    walk("", cfg.to_dict())
    return out


def config_tags(cfg: Config) -> dict[str, str]:
    m = cfg.model
    return {"variant": m.variant, "backbone": f"{m.backbone.source}:{m.backbone.name}",
            "dataset_root": cfg.data.root}


@contextmanager
def start_run(cfg: Config, run_name: str | None = None, nested: bool = False,
              parent_run_id: str | None = None, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in ``cfg.run.mlflow_experiment`` with the config as params and tags.

    ``parent_run_id`` nests it under a run started elsewhere (a sweep's driver run: it must still
    be running); ``run_id`` resumes an existing run (a restarted worker), logging only the params
    it lacks. The run ends FINISHED, or FAILED when the body raises.
    """
    exp = experiment_id(cfg)
    new = run_id is None
    with mlflow.start_run(run_id=run_id, experiment_id=exp if new else None,
                          run_name=run_name if new else None, nested=nested,
                          parent_run_id=parent_run_id,
                          tags={**config_tags(cfg), **(tags or {})}) as run:
        logged = {} if new else mlflow.get_run(run.info.run_id).data.params
        params = {k: v for k, v in flatten_config(cfg).items() if k not in logged}
        if params:
            mlflow.log_params(params)
        yield run


def _scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric entries only (per-class lists and confusion matrices are artifacts, not metrics)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[f"{prefix}{key}"] = float(value)
    return out


def log_epoch(metrics: Mapping[str, Any], epoch: int, run_id: str | None = None) -> None:
    """Log the scalar entries of ``metrics`` at step ``epoch`` (active run, or ``run_id``)."""
    values = _scalars(metrics)
    if run_id is None:
        mlflow.log_metrics(values, step=epoch)
    else:
        now = int(time.time() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(k, v, now, epoch)
                                                  for k, v in values.items()])


def log_model_cost(cost: ModelCost | Mapping[str, float]) -> None:
    """Parameters and GFLOPs as ``cost/*`` metrics (numeric, so runs sort and compare by them)."""
    mlflow.log_metrics(_scalars(cost.to_dict() if isinstance(cost, ModelCost) else cost, "cost/"))


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects, no pyplot state: safe in threads and Ray workers)
# ----------------------------------------------------------------------------------------------

def _out_path(out: str | Path | None, default_name: str) -> Path:
    if out is None:
        return Path(tempfile.mkdtemp(prefix="aim-video-plots-")) / default_name
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out / default_name
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _columns(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
             ) -> tuple[list[float], dict[str, list[float]]]:
    """Epoch axis and one series per key, from per-epoch dicts or a dict of lists."""
    if isinstance(history, Mapping):
        n = max((len(v) for v in history.values()), default=0)
        rows = [{k: v[i] for k, v in history.items() if i < len(v)} for i in range(n)]
    else:
        rows = list(history)
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    series: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        for key, value in _scalars(row).items():
            if key != "epoch":
                series.setdefault(key, [math.nan] * len(rows))[i] = value
    return epochs, series


def _panel(key: str) -> str | None:
    name = key.lower().rsplit("/", 1)[-1]
    if "loss" in name:
        return "loss"
    if name == "lr" or name.startswith("lr") or name.endswith("_lr"):
        return "learning rate"
    if any(tag in name for tag in ("top1", "top5", "acc")):
        return "accuracy"
    return None


def plot_curves(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
                out: str | Path | None = None) -> Path:
    """Loss, accuracy and learning rate against epoch as one PNG; returns its path.

    ``history``: per-epoch dicts (``{"epoch": 1, "train_loss": ..., "val_top1": ..., "lr": ...}``)
    or a dict of lists. Keys are grouped by name (``*loss*``, ``*top1*/*top5*/*acc*``, ``lr``).
    """
    epochs, series = _columns(history)
    panels: dict[str, list[str]] = {}
    for key in series:
        if (panel := _panel(key)) is not None:
            panels.setdefault(panel, []).append(key)
    order = [p for p in ("loss", "accuracy", "learning rate") if p in panels]
    if not order:
        raise ValueError(f"plot_curves: no loss/accuracy/lr series in {sorted(series)}")
    fig = Figure(figsize=(4.5 * len(order), 3.6), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(order), squeeze=False)[0], order):
        for key in panels[panel]:
            ax.plot(epochs, series[key], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    path = _out_path(out, "curves.png")
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
                   class_names: Sequence[str] | None = None, out: str | Path | None = None) -> Path:
    """Confusion matrix as a PNG: colour = share of the true class (row), text = counts."""
    cm = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"plot_confusion: expected a square matrix, got shape {cm.shape}")
    k = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"plot_confusion: {len(names)} class names for a {k}x{k} matrix")
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape, float), where=support > 0)
    side = min(max(4.0, 0.45 * k + 2.5), 24.0)
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    if k <= 20:
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                            color="white" if share[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion ({int(cm.sum())} samples)")
    path = _out_path(out, "confusion.png")
    fig.savefig(path, dpi=110)
    return path


def log_figure(path: str | Path, artifact_path: str = "plots", run_id: str | None = None) -> None:
    """Upload a PNG (or any file) to the active run, or to ``run_id``."""
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path)
    else:
        MlflowClient().log_artifact(run_id, str(path), artifact_path)


# ----------------------------------------------------------------------------------------------
# Registry: our checkpoint format behind a pyfunc
# ----------------------------------------------------------------------------------------------

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
from pipelines.tracking import AimVideoPyfunc

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
        except BackboneError:
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
            raise BackboneError(f"{local}: an MLflow model, but not an aim-video one (no 'model' "
                                f"artifact)")
        ckpt = local / arts["model"]["path"]
        backbone = local / arts["backbone"]["path"] if "backbone" in arts else None
    else:
        found = [local] if local.is_file() else sorted(local.rglob(MODEL_FILE))
        if len(found) != 1:
            raise FileNotFoundError(f"expected one {MODEL_FILE} in the downloaded artifacts, "
                                    f"found {len(found)}")
        ckpt, backbone = found[0], None
    model, cfg, class_names = load_model(ckpt, backbone_file=backbone, device=device)
    if backbone is not None:  # the download is temporary: describe the model as it was trained
        identity = read_model_file(ckpt)["backbone"]
        cfg.model.backbone.pretrained = identity["pretrained"]
        model.backbone_identity = BackboneIdentity(**identity)
    return model, cfg, class_names


def _is_official(path: Path) -> bool:
    from aim_core.official import read_official_state

    try:
        read_official_state(path)
        return True
    except BackboneError:
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
