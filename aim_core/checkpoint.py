"""The project's small model checkpoint: config + trained weights + the frozen backbone's identity.

A ViT-B/16 AIM checkpoint holds 11M weights instead of 97M; the frozen backbone is rebuilt from its
tag or local file, whose SHA-256 is checked so a checkpoint cannot silently be paired with the wrong
backbone. A randomly initialised backbone cannot be rebuilt, so then every weight is stored.
Everything loads with ``weights_only=True``: a model file can hold tensors and plain values only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .backbones import BackboneError, BackboneIdentity, build_model
from .storage import file_sha256
from .config import Config
from .model import VideoClassifier

log = logging.getLogger(__name__)

FORMAT = "aim-video/1"
MODEL_FILE = "model.pt"


class ModelFileError(ValueError):
    """A file that should hold a model does not: unreadable, wrong format, or weights that do not
    fit. (:class:`~aim_core.backbones.BackboneError` is for the frozen backbone itself.)"""


def short_reason(exc: BaseException) -> str:
    """One line of an error for a :class:`ModelFileError`: torch's unpickling errors span
    paragraphs of advice (including how to load the file unsafely) around the one that matters."""
    text = str(exc)
    if "WeightsUnpickler error: " in text:
        text = text.split("WeightsUnpickler error: ", 1)[1].split(". Please use", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")),  # skip "Error(s) in ...:"
                lines[0] if lines else type(exc).__name__)


def save_model(path: str | Path, model: VideoClassifier, cfg: Config,
               class_names: list[str] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` (a file path, or a directory to hold it)."""
    path = Path(path)
    if path.suffix != ".pt":
        path.mkdir(parents=True, exist_ok=True)
        path = path / MODEL_FILE
    identity: BackboneIdentity = model.backbone_identity
    state = model.state_dict() if identity.random_init else model.tunable_state_dict()
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "backbone": identity.to_dict(),
        "class_names": list(class_names) if class_names else None,
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        "extra": extra or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ModelFileError(f"{path}: not readable with weights_only=True "
                             f"({short_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an aim-video checkpoint (format {FORMAT})")
    return payload


def load_model(path: str | Path, backbone_file: str | Path | None = None,
               device: str | torch.device = "cpu") -> tuple[VideoClassifier, Config, list[str] | None]:
    """Rebuild a trained model in eval mode; ``backbone_file`` relocates a local backbone file."""
    payload = read_model_file(path)
    cfg = Config.from_dict(payload["config"])
    identity = payload["backbone"]
    if identity["random_init"]:
        cfg.model.backbone.pretrained = None
        model = build_model(cfg.model, load_weights=False, identity=BackboneIdentity(**identity))
    else:
        if backbone_file is not None:
            cfg.model.backbone.pretrained = str(backbone_file)
        _check_backbone_file(cfg, identity)
        # described as trained, wherever the (same, by its SHA-256) file lies now
        model = build_model(cfg.model, identity=BackboneIdentity(**identity))
    try:
        result = model.load_state_dict(payload["state_dict"], strict=identity["random_init"])
    except RuntimeError as exc:  # strict loading, or weights of another shape
        raise ModelFileError(f"{path}: weights do not fit the model of its config "
                             f"({short_reason(exc)})") from None
    if result.unexpected_keys:
        raise ModelFileError(f"{path}: unexpected weights {result.unexpected_keys[:5]}")
    missing_tunable = [k for k in result.missing_keys if model.is_tunable(k)]
    if missing_tunable:
        raise ModelFileError(f"{path}: checkpoint lacks trained weights {missing_tunable[:5]}")
    return model.to(device).eval(), cfg, payload["class_names"]


def _check_backbone_file(cfg: Config, identity: dict[str, Any]) -> None:
    expected = identity.get("sha256")
    pretrained = cfg.model.backbone.pretrained
    if not expected or not pretrained:
        return
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise BackboneError(f"the checkpoint's backbone file {path} is missing; pass backbone_file= "
                            f"(sha256 {expected[:12]}...)")
    actual = file_sha256(path)
    if actual != expected:
        raise BackboneError(f"backbone file {path} has sha256 {actual[:12]}..., but the checkpoint "
                            f"was trained on {expected[:12]}...: wrong backbone weights")
