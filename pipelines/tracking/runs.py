"""MLflow tracking for aim-video: where runs go, runs with the config as params, metrics, figures.

Embedded default (no server): tracking and registry in ``sqlite:///<abs cwd>/mlflow.db`` and
artifacts in ``<abs cwd>/mlartifacts``. MLflow itself would put artifacts in ``./mlruns``, relative
to whichever process logs them, so a Ray worker with another working directory would scatter them:
every experiment we create on a sqlite store gets an explicit absolute ``artifact_location`` next to
the database. Resolve the URI once on the driver (:func:`pin_tracking_uri`) before shipping the
config to workers, for the same reason.

Plots are in :mod:`pipelines.tracking.plots`, the Model Registry in :mod:`pipelines.tracking.registry`.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from aim_core.config import Config

from pipelines import console

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"


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


def ui_command(uri: str) -> str:
    """How a person looks at the runs of ``uri``: the MLflow UI on loopback, or the server."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"


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
    console.capture_library_logs()   # MLflow's own logging goes to the command's log
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


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric entries only (per-class lists and confusion matrices are artifacts, not metrics)."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "numel") and value.numel() == 1:   # a one-element tensor
            value = value.item()
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                out[f"{prefix}{key}"] = float(value)
    return out


def log_epoch(metrics: Mapping[str, Any], epoch: int, run_id: str | None = None) -> None:
    """Log the scalar entries of ``metrics`` at step ``epoch`` (active run, or ``run_id``)."""
    values = scalar_metrics(metrics)
    if run_id is None:
        mlflow.log_metrics(values, step=epoch)
    else:
        now = int(time.time() * 1000)
        MlflowClient().log_batch(run_id, metrics=[Metric(k, v, now, epoch)
                                                  for k, v in values.items()])


def log_model_cost(cost: Mapping[str, float] | Any) -> None:
    """Parameters and multiply-accumulates (GMACs) as ``cost/*`` metrics (numeric, so runs sort
    and compare by them); ``cost``: a :class:`~aim_core.accounting.ModelCost` or its dict."""
    values = cost.to_dict() if hasattr(cost, "to_dict") else cost
    mlflow.log_metrics(scalar_metrics(values, "cost/"))


def log_file(path: str | Path, artifact_path: str = "plots", run_id: str | None = None) -> None:
    """Upload a file (a PNG plot, a report) to the active run, or to ``run_id``; unlike
    ``mlflow.log_figure`` it takes a file already written, not a figure object."""
    if run_id is None:
        mlflow.log_artifact(str(path), artifact_path)
    else:
        MlflowClient().log_artifact(run_id, str(path), artifact_path)
