"""The models a replica serves, with one copy of each frozen backbone.

An AIM model is a frozen image ViT plus a few percent of its own weights (adapters, temporal
embedding, final norm, head). Models are loaded the one way every command loads them
(:func:`~pipelines.tracking.references.resolve_model`); :meth:`ModelPool.share_frozen` then points
each frozen parameter and buffer at the tensor an earlier model with the same backbone identity
already holds, so K models cost one backbone plus K adapter sets. A tensor is shared only when its
name, shape, dtype, device and values are the same: the identity says which models may share, the
values prove it. A randomly initialised backbone (no file hash, no tag) is never shared.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from mlflow import MlflowClient

from aim_core.backbones import BackboneIdentity
from aim_core.config import Config
from aim_core.inference import Inference
from aim_core.model import VideoClassifier
from aim_core.video import eval_protocol

from pipelines.serving.settings import ServedRef
from pipelines.tracking.references import resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded version of a served model: what a request is answered with, start to end."""

    ref: ServedRef
    version: str
    model: VideoClassifier
    cfg: Config
    class_names: list[str]
    inference: Inference

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """``(V, classes)`` for the views of a batch of videos, in one forward."""
        return dataclasses.replace(self.inference, batch_size=max(len(views), 1)).probabilities(
            self.model, views)

    def views(self) -> dict[str, object]:
        protocol = eval_protocol(self.cfg)
        return {"clips": protocol.clips, "crops": protocol.crops, "frames": protocol.frames,
                "protocol": str(protocol)}


def backbone_key(identity: BackboneIdentity) -> tuple[str, str, str] | None:
    """What models must have in common to share frozen weights: source, name and the weights'
    SHA-256 (a tag for weights downloaded by name); None for a random backbone."""
    if identity.random_init:
        return None
    pin = identity.sha256 or (f"tag:{identity.pretrained}" if identity.pretrained else None)
    return None if pin is None else (identity.source, identity.name, pin)


def current_version(client: MlflowClient, ref: ServedRef) -> str:
    """The registry's version behind ``ref`` now (an alias is looked up; a version is pinned)."""
    if ref.alias is None:
        return str(ref.version)
    return str(client.get_model_version_by_alias(ref.name, ref.alias).version)


class ModelPool:
    """Loads served models on one device; frozen tensors of one backbone are held once.

    The pool keeps only weak references: a backbone is freed with the last model that uses it (an
    alias that moves to a model on another backbone leaves nothing behind).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._frozen: dict[tuple[str, str, str], weakref.WeakValueDictionary] = {}
        self._lock = threading.Lock()   # loads come from the replica's start and its watcher

    def load(self, ref: ServedRef, version: str) -> ServedModel:
        model, cfg, class_names = resolve_model(f"models:/{ref.name}/{version}", self.device)
        shared = self.share_frozen(model)
        log.info("loaded models:/%s/%s (%d frozen tensors shared)", ref.name, version, shared)
        names = list(class_names or [f"class_{i}" for i in range(cfg.model.num_classes)])
        return ServedModel(ref, version, model, cfg, names, Inference.for_config(cfg, self.device))

    def share_frozen(self, model: VideoClassifier) -> int:
        """Point ``model``'s frozen tensors at identical ones already in the pool; returns how
        many it now shares (the others become the pool's copies for later models)."""
        key = backbone_key(model.backbone_identity)
        if key is None:
            return 0
        shared = 0
        with self._lock:
            known = self._frozen.setdefault(key, weakref.WeakValueDictionary())
            for module_name, module in model.named_modules():
                tensors = [*module.named_parameters(recurse=False),
                           *module.named_buffers(recurse=False)]
                for attr, tensor in tensors:
                    name = f"{module_name}.{attr}" if module_name else attr
                    if model.is_tunable(name):
                        continue
                    held = known.get(name)
                    if held is None:
                        known[name] = tensor
                    elif held is not tensor and _same(held, tensor):
                        setattr(module, attr, held)
                        shared += 1
                    elif held is not tensor:
                        log.warning("frozen %s of backbone %s differs from the copy in this "
                                    "replica; this model keeps its own", name, key[1])
        return shared


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
            and bool(torch.equal(a, b)))


def score_videos(items: Sequence[tuple[ServedModel, torch.Tensor]]) -> list[torch.Tensor]:
    """Class probabilities ``(classes,)`` per ``(model, views)`` item: the mean over its views.

    Items of the same loaded model go through it in one forward (every view of every video); an
    item admitted before an alias moved is scored by the version it was admitted with.
    """
    results: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[int, list[int]] = {}
    for i, (served, _) in enumerate(items):
        groups.setdefault(id(served), []).append(i)
    for indices in groups.values():
        served = items[indices[0]][0]
        views = [items[i][1] for i in indices]
        probs = served.probabilities(torch.cat(views))
        for i, part in zip(indices, probs.split([len(v) for v in views])):
            results[i] = part.mean(dim=0)
    return results  # type: ignore[return-value]
