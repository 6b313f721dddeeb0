"""The Serve replica: every served model loaded once per replica, over one copy of each backbone.

Routes (JSON answers; errors are ``{"error": "..."}`` with a 4xx status):

- ``POST /v1/models/{name}:predict``: the video file as the body (any content type but JSON), or
  ``{"uri": "..."}`` as JSON for a file the replica may read; ``?topk=N``. Answers the top classes
  with probabilities, the model's version and alias, and the test views used.
- ``GET /v1/models``: each model's name, version, alias, backbone identity, the models it shares
  the backbone with and its parameter counts, and the replica's weight memory against separate
  models.

Requests for one model are batched across callers with ``serve.batch`` (one queue per model, so
models do not wait on each other's batches); a batch is one forward over every view of its
videos, in the replica's single model thread. Decoding runs in decode threads. Neither blocks the
event loop, so listing and health checks answer while models work.

Why not Serve's model multiplexing: it loads and evicts models one by one per replica (LRU) and
routes by model id, which suits many independent full models; here the set of models is fixed at
start, each replica holds them all because a model costs only its adapters, and an alias must
swap versions in place.
"""

# No ``from __future__ import annotations`` here: with postponed annotations, FastAPI took the
# Serve-wrapped route's ``request: Request`` for a required query field (every call a 422).
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mlflow
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mlflow import MlflowClient
from ray import serve

from aim_core.inference import default_device
from aim_core.model import count_parameters

from pipelines.serving.footprint import shared_with, weight_footprint
from pipelines.serving.inputs import (RequestError, UriPolicy, decode_within, read_body,
                                      video_source)
from pipelines.serving.loopback import bind_replica_grpc_to_loopback
from pipelines.serving.pool import ModelPool, ServedModel, current_version, score_videos
from pipelines.serving.settings import ServeConfig, ServedRef
from pipelines.serving.watcher import AliasWatcher

log = logging.getLogger("ray.serve")
api = FastAPI(title="aim-video", description="AIM video classifiers over shared frozen backbones")


def prediction(served: ServedModel, probs: torch.Tensor, views: int, topk: int
               ) -> dict[str, Any]:
    values, indices = probs.topk(min(topk, len(served.class_names)))
    return {"model": served.ref.name, "version": served.version, "alias": served.ref.alias,
            "top": [{"class": served.class_names[i], "index": i, "probability": float(v)}
                    for v, i in zip(values.tolist(), indices.tolist())],
            "views": {**served.views(), "count": views}}


def listing(models: dict[str, ServedModel]) -> dict[str, Any]:
    models = dict(models)              # one view of them, whatever the watcher swaps meanwhile
    sharing = shared_with({name: served.model for name, served in models.items()})
    rows = []
    for name, served in models.items():
        identity = served.model.backbone_identity
        total, tunable = count_parameters(served.model)
        rows.append({
            "name": name, "uri": served.ref.uri, "version": served.version,
            "alias": served.ref.alias,
            "backbone": {"source": identity.source, "name": identity.name,
                         "sha256": identity.sha256, "random_init": identity.random_init,
                         "tag": None if identity.sha256 else identity.pretrained},
            "shares_backbone_with": sharing[name],
            "tunable_parameters": tunable, "parameters": total,
            "classes": served.class_names, "views": served.views()})
    memory = weight_footprint(served.model for served in models.values())
    return {"models": rows, "memory": memory.to_dict()}


def requested_topk(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise RequestError(400, f"topk: expected a positive integer, got {text!r}")
    return int(text)


@serve.deployment(name="AimVideoServer")
@serve.ingress(api)
class AimVideoServer:
    """One replica: the pool, a batch queue per model, the decode and model threads, the watcher."""

    def __init__(self, refs: list[ServedRef], settings: ServeConfig, tracking_uri: str,
                 registry_uri: str | None = None) -> None:
        bind_replica_grpc_to_loopback()
        mlflow.set_tracking_uri(tracking_uri)
        if registry_uri:
            mlflow.set_registry_uri(registry_uri)
        self.settings = settings
        self.policy = UriPolicy(tuple(settings.allowed_uri_prefixes))
        self.pool = ModelPool(default_device())
        client = MlflowClient()
        self.models = {ref.name: self.pool.load(ref, current_version(client, ref)) for ref in refs}
        self.decoders = ThreadPoolExecutor(settings.decode_threads, "aim-decode")
        self.forward = ThreadPoolExecutor(1, "aim-forward")
        self.batchers = {name: self._batcher() for name in self.models}
        self.watcher = AliasWatcher(self.pool, self.models, settings.alias_poll_s)
        self.watcher.start()
        log.info("serving %s", ", ".join(f"{m.ref.uri} (version {m.version})"
                                         for m in self.models.values()))

    def _batcher(self):
        s = self.settings

        @serve.batch(max_batch_size=s.max_batch_size, batch_wait_timeout_s=s.batch_wait_s)
        async def score(items: list[tuple[ServedModel, torch.Tensor]]) -> list[torch.Tensor]:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.forward, score_videos, items)
        return score

    @api.get("/v1/models")
    async def list_models(self) -> dict[str, Any]:
        return listing(self.models)

    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> Any:
        s = self.settings
        try:
            served = self.models.get(name)
            if served is None:
                raise RequestError(404, f"no model {name!r} is served here; served: "
                                        f"{', '.join(self.models)}")
            topk = requested_topk(request.query_params.get("topk"), s.topk)
            body = await read_body(request.headers.get("content-length"), request.stream(),
                                   s.max_upload_bytes)
            source = video_source(body, request.headers.get("content-type", ""), self.policy)
            views = await decode_within(self.decoders, source, served.cfg, s.decode_timeout_s,
                                        s.max_upload_bytes)
            probs = await self.batchers[name]((served, views))
            return prediction(served, probs, len(views), topk)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    def __del__(self) -> None:  # Serve's hook when the replica stops; __init__ may have failed
        if hasattr(self, "watcher"):
            self.watcher.stop()
        for threads in (getattr(self, "decoders", None), getattr(self, "forward", None)):
            if threads is not None:
                threads.shutdown(wait=False, cancel_futures=True)
