"""Checks that run before any Ray work: storage that can hold a run, data paths every node can
read, configs free of secrets.

A wrong storage path or a credential pasted into a config fails in seconds with a message that says
what to do, instead of after an hour of decoding. Importable without Ray (``pyarrow`` is imported
lazily, only to probe remote storage).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aim_core.config import Config, ConfigError, ModelConfig, parse_placement
from aim_core.storage import is_uri, scheme

_CREDENTIAL_HINT = (
    "credentials come from the environment or the provider's default chain (AWS: AWS_PROFILE / "
    "AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY / an IAM instance profile or IRSA; GCP: "
    "GOOGLE_APPLICATION_CREDENTIALS / gcloud application-default login / the VM's or pod's "
    "service account); check they are set for this process and grant access to this path"
)


class StorageError(RuntimeError):
    """``run.storage_path`` cannot be used: missing, not writable, or not reachable."""


class InlineCredentialsError(ValueError):
    """A configuration carries a secret (key, password, token) inline."""


class DataLocationError(ConfigError):
    """A data path is relative where the driver's working folder is not where the data is."""


# ----------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------

def check_storage(storage_path: str, timeout_s: float = 10.0) -> None:
    """Fail fast, with the path and the reason, if ``storage_path`` cannot hold a run.

    - a local folder or NFS mount (plain path or ``file://``): created if missing, then a probe
      file is written and removed;
    - ``s3://bucket/prefix``: the bucket must exist and be reachable with the ambient credentials
      and ``prefix`` must not be a file. Connect/request timeouts and a single attempt keep this
      within about ``timeout_s``. Query parameters ``region``, ``endpoint_override``, ``scheme``
      and ``anonymous`` are honoured (e.g. MinIO: ``s3://b/p?endpoint_override=host:9000&scheme=http``);
      without ``region`` the region comes from ``AWS_REGION``/``AWS_DEFAULT_REGION`` or is resolved
      from the bucket;
    - ``gs://bucket/prefix`` and any other pyarrow URI: same checks through ``pyarrow.fs``.

    Remote write permission is not probed here (that would leave objects behind on
    failure-prone paths); Ray Train checks it with a marker file when the run starts.
    """
    if not isinstance(storage_path, str) or not storage_path.strip():
        raise StorageError(f"run.storage_path is empty ({storage_path!r}): give a local folder, "
                           "an NFS mount, s3://bucket/prefix or gs://bucket/prefix")
    storage_path = storage_path.strip()
    if scheme(storage_path) not in (None, "file"):
        _check_remote(storage_path, timeout_s)
    else:
        _check_local(storage_path)


def _check_local(storage_path: str) -> None:
    raw = storage_path[len("file://"):] if storage_path.lower().startswith("file://") else storage_path
    path = Path(raw).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StorageError(f"storage path {storage_path!r} cannot be used: {path} (or a parent of "
                           f"it) exists and is not a folder ({exc.strerror or exc})") from exc
    except NotADirectoryError as exc:
        raise StorageError(f"storage path {storage_path!r} cannot be created: a parent of {path} "
                           f"is a file, not a folder") from exc
    except PermissionError as exc:
        raise StorageError(f"storage path {storage_path!r} cannot be created: permission denied "
                           f"({exc.filename or path}); choose a folder you can write") from exc
    except OSError as exc:
        raise StorageError(f"storage path {storage_path!r} cannot be created: "
                           f"{exc.strerror or exc}") from exc
    if not path.is_dir():
        raise StorageError(f"storage path {storage_path!r} is not a folder")
    probe = path / f".aim_write_probe_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"ok")
    except OSError as exc:
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or exc)
        raise StorageError(f"storage path {storage_path!r} is not writable: {reason}; runs write "
                           "checkpoints and results there") from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _split_bucket(uri: str) -> tuple[str, str, str, dict[str, list[str]]]:
    parts = urlsplit(uri)
    bucket = parts.netloc
    key = parts.path.strip("/")
    return parts.scheme.lower(), bucket, key, parse_qs(parts.query)


def _remote_error(storage_path: str, what: str, exc: BaseException | None = None) -> StorageError:
    detail = f": {exc}" if exc is not None else ""
    return StorageError(f"storage path {storage_path!r} is not usable: {what}{detail}. "
                        f"Hint: {_CREDENTIAL_HINT}.")


def _check_remote(storage_path: str, timeout_s: float) -> None:
    try:
        from pyarrow import fs as pafs
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise StorageError(f"storage path {storage_path!r} needs pyarrow to be checked") from exc

    scheme, bucket, key, query = _split_bucket(storage_path)
    if not bucket:
        raise StorageError(f"storage path {storage_path!r} has no bucket: expected "
                           f"{scheme}://bucket/prefix")
    try:
        if scheme == "s3":
            filesystem = _s3_filesystem(pafs, bucket, query, timeout_s)
        elif scheme in ("gs", "gcs"):
            # The GCS client's total time is roughly twice its retry limit plus a second.
            filesystem = pafs.GcsFileSystem(
                retry_time_limit=datetime.timedelta(seconds=max(1, int(timeout_s // 4))))
        else:
            filesystem, _ = pafs.FileSystem.from_uri(storage_path)
        bucket_info = filesystem.get_file_info(bucket)
    except StorageError:
        raise
    except Exception as exc:  # pyarrow raises OSError/ArrowInvalid with the SDK's message
        raise _remote_error(storage_path, "cannot reach the bucket", exc) from exc
    if bucket_info.type == pafs.FileType.NotFound:
        raise _remote_error(storage_path, f"bucket {bucket!r} does not exist or is not visible "
                                          "with the current credentials")
    if not key:
        return
    try:
        info = filesystem.get_file_info(f"{bucket}/{key}")
    except Exception as exc:
        raise _remote_error(storage_path, "cannot read the prefix", exc) from exc
    if info.type == pafs.FileType.File:
        raise StorageError(f"storage path {storage_path!r} is an object (a file), not a prefix: "
                           "choose a folder-like prefix for runs")


def _s3_filesystem(pafs: Any, bucket: str, query: dict[str, list[str]], timeout_s: float) -> Any:
    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    unknown = set(query) - {"region", "endpoint_override", "scheme", "anonymous"}
    if unknown:
        raise StorageError(f"s3 storage path: unsupported query parameters {sorted(unknown)}; "
                           "allowed: region, endpoint_override, scheme, anonymous")
    endpoint = first("endpoint_override")
    region = first("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region is None and endpoint is None:
        region = pafs.resolve_s3_region(bucket)
    connect = max(0.5, min(timeout_s / 2.0, 5.0))
    return pafs.S3FileSystem(
        region=region,
        endpoint_override=endpoint,
        scheme=first("scheme") or "https",
        anonymous=(first("anonymous") or "").lower() in ("1", "true", "yes"),
        connect_timeout=connect,
        request_timeout=max(1.0, timeout_s - connect),
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )


# ----------------------------------------------------------------------------------------------
# Data location
# ----------------------------------------------------------------------------------------------

# Set by Ray's job supervisor in the environment of a job's entrypoint (and nowhere else), see
# ray/dashboard/modules/job/job_supervisor.py: _get_driver_env_vars.
RAY_JOB_DRIVER_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
DATA_PATH_FIELDS = ("data.root", "data.train_annotations", "data.val_annotations",
                    "data.labels_file", "data.shards_dir", "prepare.output")


def shared_data_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """Why this run's data paths must mean the same on every node, or ``None`` on one machine.

    A job's driver runs in Ray's copy of the job's working_dir, and a multi-node cluster's decode
    tasks run on other machines: there a relative path names nothing the user meant. KubeRay sets
    ``RAY_ADDRESS`` in every pod, so joining a cluster that way counts even while only its head
    is up (an autoscaler adds the nodes that will read the data later).
    """
    env = os.environ if environ is None else environ
    if RAY_JOB_DRIVER_ENV in env:
        return "this runs as a Ray job (ray job submit, a KubeRay RayJob)"
    address = env.get("RAY_ADDRESS", "").strip()
    if address and address != "local":
        return f"this joins the Ray cluster at RAY_ADDRESS={address}"
    ray = sys.modules.get("ray")   # connected already (e.g. ray.init(address=...)): count its nodes
    if ray is not None and ray.is_initialized():
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        if nodes > 1:
            return f"the Ray cluster this runs on has {nodes} nodes"
    return None


def check_data_location(cfg: Config, environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`DataLocationError` naming the first relative data path, when
    :func:`shared_data_reason` says the run needs paths every node shares.

    Absolute paths (``~`` expanded) and URIs (``s3://``, ``gs://``) pass; so does everything on a
    laptop, where :func:`pipelines.runtime.absolute_paths` resolves relative paths on the driver.
    """
    reason = shared_data_reason(environ)
    if reason is None:
        return
    for name in DATA_PATH_FIELDS:
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if value and not is_uri(value) and not os.path.isabs(os.path.expanduser(value)):
            raise DataLocationError(
                f"{name}: {value!r} is a relative path, but {reason}; give an absolute path "
                "that every node mounts or a bucket URI (s3://..., gs://...)")


# ----------------------------------------------------------------------------------------------
# A training run, before Ray starts
# ----------------------------------------------------------------------------------------------

def check_model(model: ModelConfig) -> None:
    """The architecture the config asks for exists: backbone name and placement vs its depth."""
    from aim_core.backbones import resolve_spec

    spec = resolve_spec(model.backbone)
    parse_placement(model.adapter.placement, spec.layers)


def check_training(cfg: Config) -> None:
    """Everything a training run's config and annotations can tell, before Ray starts or any
    video is decoded: storage reachable, the model buildable, the data root listed, labelled
    videos found, and ``model.num_classes`` matching the class map. ``cfg`` has absolute paths."""
    from aim_core.annotations import AnnotationError, load_split

    check_storage(cfg.run.storage_path)
    check_model(cfg.model)
    train = load_split(cfg.data, "train")
    if not train.records:
        raise AnnotationError(f"data.root: no labelled training video found under {cfg.data.root}"
                              f" (format {cfg.data.format!r})")
    classes = len(train.class_map)
    if cfg.model.num_classes != classes:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes}, but the class map has "
                          f"{classes} classes ({', '.join(train.class_map.names[:5])}"
                          f"{', ...' if classes > 5 else ''}): set model.num_classes={classes}")


# ----------------------------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------------------------

# Whole key names (normalised: lower case, '-' -> '_') that always denote a secret.
_SECRET_KEYS = {
    "aws_secret_access_key", "aws_session_token", "aws_access_key_id", "secret_access_key",
    "access_key", "access_key_id", "secret_key", "session_token", "private_key", "api_key",
    "apikey", "api_token", "auth_token", "access_token", "refresh_token", "client_secret",
    "password", "passwd", "pwd", "secret", "token", "credentials", "credential",
    "mlflow_tracking_password", "mlflow_tracking_token", "hf_token", "wandb_api_key",
    "google_application_credentials_json", "connection_string", "sas_token",
}
# Single words that make a key secret wherever they appear as a word of it (db_password, ...).
_SECRET_WORDS = {"password", "passwd", "secret", "token", "apikey", "credentials", "credential"}
_SECRET_VALUE_PATTERNS = (
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^/\s:@]+:[^/\s@]+@"), "a URI with user:password"),
)


def _key_words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)     # camelCase -> camel_Case
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _secret_key(key: str) -> bool:
    words = _key_words(key)
    if not words:
        return False
    if "_".join(words) in _SECRET_KEYS:
        return True
    return any(w in _SECRET_WORDS for w in words) or "api_key" in "_".join(words)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes, list, dict, tuple)) and len(value) == 0)


def reject_inline_credentials(config: Any, where: str = "config") -> None:
    """Raise :class:`InlineCredentialsError` if ``config`` holds a secret.

    ``config`` is a mapping (e.g. ``Config.to_dict()`` or a parsed YAML file), a dataclass, or a
    list of them. A key that names a secret (``aws_secret_access_key``, ``password``, ``token``,
    ``api_key``, ...) with a non-empty value is refused, as is any string value that looks like an
    AWS key id, a private key, or a URI with ``user:password@``. The message names the field but
    never repeats the value.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    problems: list[str] = []
    _scan(config, "", problems)
    if problems:
        listed = "; ".join(problems)
        raise InlineCredentialsError(
            f"{where} contains credentials inline ({listed}). Remove them: secrets must not live "
            "in configs, manifests or job metadata (they end up in git, MLflow params and the Ray "
            "dashboard). Use the environment (e.g. MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_PROFILE) "
            "or the provider's credential chain (IAM instance profile / IRSA, GCP service account / "
            "Workload Identity, a Kubernetes Secret referenced by the pod).")


def _scan(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _secret_key(key) and not _is_empty(value) \
                    and not isinstance(value, (Mapping, list, tuple)) and not isinstance(value, bool):
                problems.append(f"{sub}: looks like a secret")
                continue
            _scan(value, sub, problems)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _scan(value, f"{path}[{i}]", problems)
    elif isinstance(node, str):
        for pattern, label in _SECRET_VALUE_PATTERNS:
            if pattern.search(node):
                problems.append(f"{path or 'value'}: contains {label}")
                break
