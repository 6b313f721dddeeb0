"""What each piece of work asks Ray for: decode tasks on CPU nodes, training workers on GPUs, trials
that fit the cluster, and where the dashboard listens.

Pure Python, importable without Ray. Every function takes the validated :class:`RunConfig`, so no
value is checked twice.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from aim_core.config import ConfigError, RunConfig

DEFAULT_DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_HOST_ENV = "AIM_DASHBOARD_HOST"

# Custom Ray resource advertised by the CPU decoding nodes (cluster/kuberay/raycluster.yaml,
# cluster/aws.yaml, cluster/gcp.yaml). Decode tasks request a tiny fraction of it when the cluster
# has it, which pins decoding to those nodes and tells the autoscaler which node type to add.
DECODE_RESOURCE = "aim_decode"
DECODE_RESOURCE_PER_TASK = 0.001


def dashboard_host() -> str:
    """Interface the Ray dashboard binds to: loopback unless ``AIM_DASHBOARD_HOST`` is set.

    The dashboard's job API runs arbitrary commands, so it is never exposed by default; reach a
    remote one through ``ray dashboard cluster.yaml`` or ``kubectl port-forward``.
    """
    value = os.environ.get(DASHBOARD_HOST_ENV, "").strip()
    return value or DEFAULT_DASHBOARD_HOST


def ingest_resources(run: RunConfig, cluster_resources: Mapping[str, float] | None = None
                     ) -> dict[str, Any]:
    """Ray remote args for one decode task (``map`` / ``map_batches`` keyword arguments).

    Decoding is CPU work: ``num_cpus=run.ingest_cpus`` and ``num_gpus=0`` always, so decode tasks
    never hold a GPU a training worker is waiting for. When ``cluster_resources`` (e.g.
    ``ray.cluster_resources()``) shows the :data:`DECODE_RESOURCE` that the cluster manifests give
    the CPU decoding nodes, each task also requests a tiny amount of it, which keeps decoding on
    those nodes; on a laptop (no such resource) nothing extra is requested, so nothing hangs.
    """
    args: dict[str, Any] = {"num_cpus": float(run.ingest_cpus), "num_gpus": 0}
    if cluster_resources and float(cluster_resources.get(DECODE_RESOURCE, 0) or 0) > 0:
        args["resources"] = {DECODE_RESOURCE: DECODE_RESOURCE_PER_TASK}
    return args


def uses_gpus(run: RunConfig, gpus_available: float) -> bool:
    """``run.use_gpu`` when set, else whether the cluster has GPUs."""
    return bool(run.use_gpu) if run.use_gpu is not None else gpus_available > 0


def train_scaling(run: RunConfig, gpus_available: float) -> dict[str, Any]:
    """Keyword arguments for ``ray.train.ScalingConfig``.

    Each worker asks for ``run.cpus_per_worker`` CPUs and, with GPUs (:func:`uses_gpus`),
    ``run.gpus_per_worker`` GPUs. On an autoscaling cluster whose GPU group starts at zero nodes,
    ``gpus_available`` is 0 at submission time: set ``run.use_gpu=true`` explicitly there, and the
    autoscaler adds GPU nodes for the workers' requests.
    """
    use_gpu = uses_gpus(run, gpus_available)
    resources: dict[str, float] = {"CPU": float(run.cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = float(run.gpus_per_worker)
        if run.use_gpu and gpus_available <= 0:
            warnings.warn("run.use_gpu=true but the cluster shows no GPUs yet: the workers will "
                          "wait until an autoscaler adds GPU nodes", RuntimeWarning, stacklevel=2)
    return {"num_workers": run.num_workers, "use_gpu": use_gpu, "resources_per_worker": resources}


def trial_concurrency(run: RunConfig, cluster_resources: Mapping[str, float]) -> int:
    """Sweep trials that fit the cluster at once: each needs its workers plus at least one CPU for
    its decode tasks (two trials sharing one spare CPU for decoding crawled on two cores, seen here)
    and 0.1 CPU for the trial itself. Refuses a plan in which no trial fits, which would wait forever.
    """
    per_trial = run.num_workers * run.cpus_per_worker + max(1.0, run.ingest_cpus) + 0.1
    cpus = cluster_resources.get("CPU", 0)
    fit = math.floor(cpus / per_trial + 1e-9)
    gpus = cluster_resources.get("GPU", 0)
    if uses_gpus(run, gpus):
        fit = min(fit, math.floor(gpus / (run.num_workers * run.gpus_per_worker) + 1e-9))
    if fit < 1:
        raise ConfigError(
            f"run: a trial needs {per_trial:.2f} CPUs (run.num_workers x run.cpus_per_worker + "
            f"decoding + 0.1 for the trial) but the cluster has {cpus:g}: lower "
            f"run.cpus_per_worker or run.ingest_cpus (e.g. --set run.cpus_per_worker=0.5 "
            f"--set run.ingest_cpus=0.5), or it would wait forever")
    return fit
