"""What ``aim-video serve`` serves and how: :class:`ServeConfig`, validated when it is built like
every config (errors name the field, ``serve.max_upload_bytes: expected a positive integer, got
0``), and :class:`ServedRef`, the registered models it serves.

The defaults are the safe ones: the HTTP proxy listens on 127.0.0.1, a request may not name a file
or bucket for the replica to read (``allowed_uri_prefixes`` is empty: uploads only), uploads are
capped and decoding has a time limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aim_core.config import ConfigError, build_section
from aim_core.storage import is_uri

from pipelines.tracking.references import ModelReferenceError, registry_reference

MiB = 2**20


def _check(ok: bool, path: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path}: expected {allowed}, got {value!r}")


@dataclass
class ServeConfig:
    """The Serve application's settings; ``aim-video serve``'s flags map one to one onto them."""

    host: str = "127.0.0.1"                  # where the HTTP proxy listens; 0.0.0.0 exposes it
    port: int = 8000
    replicas: int = 1                        # each holds every served model
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0                # > 0: the models run on the replica's GPU
    max_batch_size: int = 8                  # videos of one model per forward (all their views)
    batch_wait_s: float = 0.01               # how long a batch waits to fill
    max_ongoing_requests: int = 64           # per replica, before Serve queues at the proxy
    max_upload_bytes: int = 64 * MiB         # a larger body gets 413
    decode_timeout_s: float = 30.0           # per request, from when its decoding starts
    decode_threads: int = 2                  # replica threads decoding requests
    alias_poll_s: float = 10.0               # how often a replica looks up its models' aliases
    # Where a JSON request's "uri" may point: absolute folders or URI prefixes (s3://bucket/videos/)
    allowed_uri_prefixes: list[str] = field(default_factory=list)
    topk: int = 5                            # classes per answer (a request may ask ?topk=N)

    def validate(self, path: str = "serve") -> None:
        _check(bool(self.host.strip()), f"{path}.host", "an address to listen on", self.host)
        _check(0 < self.port < 65536, f"{path}.port", "a port in 1..65535", self.port)
        for name in ("replicas", "max_batch_size", "max_ongoing_requests", "max_upload_bytes",
                     "decode_threads", "topk"):
            value = getattr(self, name)
            _check(value > 0, f"{path}.{name}", "a positive integer", value)
        for name in ("replica_cpus", "decode_timeout_s", "alias_poll_s"):
            value = getattr(self, name)
            _check(value > 0, f"{path}.{name}", "a positive number", value)
        _check(self.replica_gpus >= 0, f"{path}.replica_gpus", "a non-negative number",
               self.replica_gpus)
        _check(self.batch_wait_s >= 0, f"{path}.batch_wait_s", "a non-negative number",
               self.batch_wait_s)
        for i, prefix in enumerate(self.allowed_uri_prefixes):
            _check(is_uri(prefix) or os.path.isabs(prefix), f"{path}.allowed_uri_prefixes[{i}]",
                   "an absolute folder or a URI prefix such as s3://bucket/videos/", prefix)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        return build_section(cls, data, "serve")


@dataclass(frozen=True)
class ServedRef:
    """A registered model to serve: ``models:/NAME@ALIAS`` (followed as the alias moves) or
    ``models:/NAME/VERSION`` (pinned). ``NAME`` is its route: ``/v1/models/NAME:predict``."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else \
            f"models:/{self.name}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> ServedRef:
        parts = registry_reference(text)
        if parts is None:
            raise ModelReferenceError(f"{text}: serve takes registered models, models:/NAME@ALIAS "
                                      f"or models:/NAME/VERSION (register a checkpoint with "
                                      f"aim-video train --register NAME)")
        return cls(*parts)


def parse_served(texts: list[str]) -> list[ServedRef]:
    """The references of ``aim-video serve``, one per name (a name is a route)."""
    refs = [ServedRef.parse(t) for t in texts]
    names = [r.name for r in refs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelReferenceError(f"model {twice[0]!r} is given twice: each served name is one "
                                  f"route (/v1/models/{twice[0]}:predict)")
    return refs
