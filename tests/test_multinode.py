"""Training across two nodes survives losing one of them mid-epoch.

A simulated cluster (``ray.cluster_utils.Cluster``: separate raylets on this machine) with a head
that offers no CPUs, like the cluster manifests' heads, and two worker nodes of 3 CPUs. Each
training worker asks for 2 CPUs, so the two workers cannot share a node: one lands on each, and
the CPU left on each node runs the decode tasks (``run.ingest_cpus`` = 1: Ray Data fuses the
decode and the column projection, which asks for 1 CPU, into one task only when both ask for the
same; with 0.5 the projection waits forever for a whole CPU). After the first
checkpoint, one worker node is removed while the next epoch is running, and a replacement node
joins. Ray Train restarts the worker group from the last checkpoint; the run then finishes every
epoch exactly once, in one continuous MLflow history.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import pytest
import ray
from clusters import (VAL_VIDEOS, free_port, raylet_pids, tiny_assets, training_config,
                      worker_pool_environment)
from mlflow import MlflowClient
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from aim_core.config import Config
from pipelines.train.driver import run_training

pytestmark = pytest.mark.slow

EPOCHS = 4
TRAIN_WORKER = "RayTrainWorker"


@pytest.fixture
def cluster(monkeypatch):
    """Head (no CPUs, dashboard on loopback) + two worker nodes; removed entirely afterwards.

    Nodes inherit this process's environment: the Train controller polls its workers every
    0.2 s instead of 2 s, so a finished report is registered well before the next epoch ends, and
    the nodes keep idle task processes as the private cluster does.
    """
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    for key, value in worker_pool_environment(3).items():
        monkeypatch.setenv(key, value)
    temp_dir = tempfile.mkdtemp(prefix="ray-nodes-")  # short: Ray's unix sockets live below it
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(), "temp_dir": temp_dir})
    try:
        for _ in range(2):
            add_worker_node(cluster)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        session = cluster.head_node.get_session_dir_path() if cluster.head_node else None
        cluster.shutdown()
        while mlflow.active_run():
            mlflow.end_run()
        left = _wait_until_gone(session) if session else []
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"raylets of the test cluster outlived it: {left}"


def add_worker_node(cluster: Cluster):
    """A worker node of 3 CPUs, sharing the head's temp folder."""
    return cluster.add_node(num_cpus=3, temp_dir=cluster.head_node.get_temp_dir_path())


def test_losing_a_node_mid_epoch_resumes_from_the_last_checkpoint(tmp_path, tmp_path_factory,
                                                                   cluster):
    cfg = Config.from_dict(training_config(
        tmp_path, tiny_assets(tmp_path_factory), name="two-nodes", epochs=EPOCHS,
        run={"num_workers": 2, "cpus_per_worker": 2.0, "ingest_cpus": 1.0, "max_failures": 2}))
    run_dir = Path(cfg.run.storage_path) / "two-nodes"
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg)
        except Exception as exc:  # noqa: BLE001 - the main thread reports it
            outcome["error"] = exc

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()  # add_node/remove_node need the main thread (signal handlers), so fit runs here

    # Wait until Ray Train has registered the first checkpoint (a checkpoint_* folder alone may
    # still be uploading, and a restart would not know it): one training worker per worker node.
    _wait_for(lambda: _registered_epoch(run_dir), 240, trainer, outcome, "a registered checkpoint")
    hosts = _train_worker_nodes()
    worker_nodes = {node.node_id: node for node in cluster.worker_nodes}
    assert sorted(hosts) == sorted(worker_nodes), "expected one training worker on each node"

    # Lose a node while the next epoch runs, and offer a replacement.
    lost = next(iter(worker_nodes.values()))
    cluster.remove_node(lost, allow_graceful=False)
    checkpointed = _registered_epoch(run_dir)
    assert 1 <= checkpointed < EPOCHS
    replacement = add_worker_node(cluster)

    trainer.join(timeout=480)
    assert not trainer.is_alive(), "training did not finish after the node loss"
    assert "error" not in outcome, f"training failed: {outcome.get('error')!r}"
    result = outcome["result"]

    # The group restarted on the surviving node and the replacement, from the checkpoint.
    assert set(_resumed_epochs(cluster)) == {checkpointed}
    ran_on = {actor.node_id for actor in list_actors(filters=[("class_name", "=", TRAIN_WORKER)],
                                                     limit=1000)}
    assert replacement.node_id in ran_on and lost.node_id in ran_on

    # No finished epoch lost or repeated: in the run's history and in MLflow.
    assert [h["epoch"] for h in result.history] == list(range(1, EPOCHS + 1))
    store = MlflowClient(cfg.run.tracking_uri)
    for metric in ("train_loss", "train_top1", "lr"):
        steps = [m.step for m in store.get_metric_history(result.mlflow_run_id, metric)]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (metric, steps)
    assert store.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert result.evaluation["num_videos"] == VAL_VIDEOS


def _wait_for(probe, timeout_s: float, trainer: threading.Thread, outcome: dict, what: str):
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        if not trainer.is_alive():
            pytest.fail(f"training ended before {what}: {outcome}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s")
        time.sleep(0.2)
    return found


def _registered_epoch(run_dir: Path) -> int | None:
    """Epoch of the latest checkpoint Ray Train registered (what a restart resumes from)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or mid-write
        return None


def _train_worker_nodes() -> list[str]:
    actors = list_actors(filters=[("class_name", "=", TRAIN_WORKER), ("state", "=", "ALIVE")])
    return [actor.node_id for actor in actors]


def _resumed_epochs(cluster: Cluster) -> list[int]:
    """Epochs named by "resumed from the checkpoint of epoch N" in the workers' logs.

    Rank 0 prints it; a worker's line can show up in both its .out and .err file.
    """
    logs = Path(cluster.head_node.get_session_dir_path()) / "logs"
    found = []
    for log in sorted(logs.glob("worker-*.*")):  # .out or .err, depending on the worker
        found += [int(n) for n in re.findall(r"resumed from the checkpoint of epoch (\d+)",
                                             log.read_text(errors="replace"))]
    return found


def _wait_until_gone(session_dir: str, timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := raylet_pids(session_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left
