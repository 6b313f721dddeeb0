"""Every way a person names a trained model (``--model REF``), resolved to one loaded model.

- ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``: a registered version;
- ``runs:/RUN_ID/PATH`` or a bare MLflow run id: what that run logged (its checkpoint);
- a training run's folder (``<run.storage_path>/<run.name>``): its best evaluated checkpoint, or
  its latest when none was evaluated, saying which;
- a checkpoint folder or ``model.pt`` of ours, or a released AIM ``.pth``.

Models are read from our checkpoint format (``weights_only``), never by unpickling a pyfunc
wrapper, and a downloaded model only from files inside its download folder, whatever a tampered
``MLmodel`` file says. A reference that names nothing usable fails with :class:`ModelReferenceError`,
which says what was found there instead.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from pathlib import Path

import mlflow
import torch
import yaml
from mlflow import MlflowClient

from aim_core.checkpoint import MODEL_FILE, ModelFileError, load_model
from aim_core.config import Config, DataConfig
from aim_core.model import VideoClassifier

from pipelines import console

LoadedModel = tuple[VideoClassifier, Config, "list[str] | None"]
ACCEPTED = ("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH, an MLflow run id, a "
            "training run's folder, a checkpoint folder or model.pt, or a released AIM .pth")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CHECKPOINT_ARTIFACT = "checkpoint"        # where a training run logs its model.pt
EVAL_FILE = "eval.json"                   # a Ray Train checkpoint's last evaluation


class ModelReferenceError(ValueError):
    """A ``--model`` reference that names no usable model; the message says what is there."""


def is_mlflow_uri(ref: str) -> bool:
    return str(ref).startswith(("models:/", "runs:/")) or bool(_RUN_ID.match(str(ref)))


def registry_reference(uri: str) -> tuple[str, str | None, str | None] | None:
    """``(name, alias, version)`` of ``models:/NAME@ALIAS`` (version None) or
    ``models:/NAME/VERSION`` (alias None); None for any other reference."""
    match = _MODELS_URI.match(str(uri))
    return (match["name"], match["alias"], match["version"]) if match else None


def source_run_id(uri: str) -> str | None:
    """The MLflow run a ``models:/``, ``runs:/`` or run-id reference was logged in."""
    uri = str(uri)
    if _RUN_ID.match(uri):
        return uri
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
    """``(model, config, class_names)`` of ``ref`` (see the module docstring); class names are
    None for released checkpoints, which carry none."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if not path.exists() and is_mlflow_uri(ref):
        uri = f"runs:/{ref}/{CHECKPOINT_ARTIFACT}" if _RUN_ID.match(ref) else ref
        with tempfile.TemporaryDirectory(prefix="aim-video-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            return _load_downloaded(local, ref, device)
    if not path.exists():
        raise ModelReferenceError(f"no model at {ref}: expected {ACCEPTED}")
    if path.is_dir():
        return load_model(_checkpoint_in_folder(path), device=device)
    return _load_file(path, device)


def _checkpoint_in_folder(folder: Path) -> Path:
    """``model.pt`` of a checkpoint folder, or of a training run folder's chosen checkpoint."""
    if (folder / MODEL_FILE).is_file():
        return folder / MODEL_FILE
    checkpoints = sorted(c for c in folder.glob("checkpoint_*") if (c / MODEL_FILE).is_file())
    if not checkpoints:
        found = sorted(p.name for p in folder.iterdir())[:8]
        raise ModelReferenceError(f"{folder}: no {MODEL_FILE} and no checkpoint_* folders with one"
                                  f" (found: {', '.join(found) or 'nothing'}); expected {ACCEPTED}")
    scored = [(_val_top1(c), c) for c in checkpoints]
    evaluated = [(score, c) for score, c in scored if score is not None]
    if evaluated:
        score, chosen = max(evaluated, key=lambda sc: (sc[0], sc[1].name))
        console.say(f"using {chosen.name} of {folder}: its best evaluated checkpoint "
                    f"(val top-1 {100 * score:.1f}%)")
    else:
        chosen = checkpoints[-1]
        console.say(f"using {chosen.name} of {folder}: its latest checkpoint (none was evaluated)")
    return chosen / MODEL_FILE


def _val_top1(checkpoint: Path) -> float | None:
    try:
        return float(json.loads((checkpoint / EVAL_FILE).read_text())["top1"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_file(path: Path, device: str | torch.device) -> LoadedModel:
    """Ours or a released AIM checkpoint, told apart by what the file holds, not its name."""
    from aim_core.official import read_official_state

    if not zipfile.is_zipfile(path):
        raise ModelReferenceError(f"{path} is not a model: {_describe_file(path)}; expected "
                                  f"{ACCEPTED}")
    try:
        return load_model(path, device=device)
    except ModelFileError:
        pass                                   # not ours: perhaps a released AIM checkpoint
    try:
        read_official_state(path)
    except ModelFileError as exc:
        raise ModelReferenceError(f"{path} is a torch file but neither an aim-video nor a "
                                  f"released AIM checkpoint ({exc})") from None
    return _load_official(path, device)


def _describe_file(path: Path) -> str:
    head = path.read_bytes()[:512]
    if head[:1] in (b"{", b"[") or path.suffix == ".json":
        return "it holds JSON"
    if not head:
        return "it is empty"
    return "it is not a torch checkpoint (no zip archive)"


def _load_downloaded(local: Path, ref: str, device: str | torch.device) -> LoadedModel:
    """A downloaded pyfunc model folder (MLmodel) or a folder/file holding model.pt."""
    mlmodel = local / "MLmodel" if local.is_dir() else None
    if mlmodel is not None and mlmodel.is_file():
        spec = yaml.safe_load(mlmodel.read_text())
        arts = (spec.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
        if "model" not in arts:
            raise ModelReferenceError(f"{ref}: an MLflow model, but not an aim-video one (no "
                                      f"'model' artifact)")
        ckpt = _inside(local, arts["model"]["path"], "model")
        backbone = (_inside(local, arts["backbone"]["path"], "backbone")
                    if "backbone" in arts else None)
    else:
        found = [local] if local.is_file() else sorted(local.rglob(MODEL_FILE))
        if len(found) != 1:
            raise ModelReferenceError(f"{ref}: expected one {MODEL_FILE} in its artifacts, "
                                      f"found {len(found)}")
        ckpt, backbone = _inside(local, str(found[0]), MODEL_FILE), None
    model, cfg, class_names = load_model(ckpt, backbone_file=backbone, device=device)
    if backbone is not None:  # the download is temporary: describe the model as it was trained
        cfg.model.backbone.pretrained = model.backbone_identity.pretrained
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


def released_test_views(num_classes: int, width: int, frames: int) -> dict[str, object]:
    """The test protocol of the released config a checkpoint's shapes point to (the released
    configs under ``configs/recognition/vit/``): SSv2 (174 classes) 1 clip x 3 crops, uniform;
    Diving-48 (48) uniform, 1 x 3 for ViT-B/16 (its config's ThreeCrop) and 1 x 1 for ViT-L/14;
    Kinetics dense 8x16 / 16x8 / 32x4, 3 clips x 1 crop, and 3 x 3 for Kinetics-700."""
    if num_classes in (174, 48):
        crops = 3 if num_classes == 174 or width < 1024 else 1
        return {"sampler": "uniform", "test_clips": 1, "test_crops": crops,
                "horizontal_flip": False}
    return {"sampler": "dense", "frame_interval": max(1, 128 // frames), "test_clips": 3,
            "test_crops": 3 if num_classes == 700 else 1}


def _load_official(path: Path, device: str | torch.device) -> LoadedModel:
    from aim_core.official import load_official_checkpoint

    model = load_official_checkpoint(path).to(device).eval()
    m = model.cfg
    data = DataConfig(**released_test_views(m.num_classes, model.spec.width, m.num_frames))
    return model, Config(model=m, data=data).validate(), None
