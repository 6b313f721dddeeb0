"""`aim-video train` refuses relative data paths where the driver's folder is not the data's.

A job's driver runs in Ray's copy of the job's working_dir and a multi-node cluster decodes on other
machines, so there a relative `data.*` path names nothing the user meant: the run stops before
anything starts, with one line naming the field. On a laptop relative paths keep working.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from aim_core.config import Config
from pipelines.cli import main
from pipelines.preflight import (
    DATA_PATH_FIELDS,
    RAY_JOB_DRIVER_ENV,
    DataLocationError,
    check_data_location,
    shared_data_reason,
)

JOB = {RAY_JOB_DRIVER_ENV: '{"runtime_env": {}, "metadata": {}}'}


def _config(**data) -> Config:
    return Config.from_dict({"data": data})


@pytest.mark.parametrize("field", DATA_PATH_FIELDS)
def test_a_relative_data_path_in_a_ray_job_is_refused_naming_the_field(field):
    cfg = _config(root="/data").with_overrides({field: "data/kinetics400/x"})
    with pytest.raises(DataLocationError) as error:
        check_data_location(cfg, environ=JOB)
    message = str(error.value)
    assert message.startswith(f"{field}: 'data/kinetics400/x' is a relative path")
    assert "Ray job" in message and "s3://" in message and "\n" not in message


@pytest.mark.parametrize("root", ["/mnt/data/k400/videos", "~/k400/videos", "s3://b/k400/videos",
                                  "gs://b/k400/videos"])
def test_absolute_paths_and_uris_pass_in_a_ray_job(root):
    check_data_location(_config(root=root, train_annotations="s3://b/train.csv"), environ=JOB)


def test_joining_a_cluster_by_ray_address_counts_as_a_cluster():
    """KubeRay sets RAY_ADDRESS in every pod: true even while only the head is up."""
    cfg = _config(root="videos")
    with pytest.raises(DataLocationError, match=r"RAY_ADDRESS=10\.0\.0\.2:6379"):
        check_data_location(cfg, environ={"RAY_ADDRESS": "10.0.0.2:6379"})
    assert shared_data_reason({"RAY_ADDRESS": "auto"}) is not None


def test_on_a_laptop_relative_paths_pass():
    for environ in ({}, {"RAY_ADDRESS": "local"}, {"RAY_ADDRESS": " "}):
        assert shared_data_reason(environ) is None
        check_data_location(_config(root="demo_data/videos"), environ=environ)


def test_the_cli_stops_a_job_before_anything_starts(tmp_path, monkeypatch, capsys):
    """`aim-video train` as a job's entrypoint: exit 2, one line on stderr, nothing created."""
    import ray

    storage = tmp_path / "runs"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": "videos", "format": "folder"},
                                      "run": {"storage_path": str(storage)}}))
    monkeypatch.setenv(RAY_JOB_DRIVER_ENV, JOB[RAY_JOB_DRIVER_ENV])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aim-video train: data.root: 'videos' is a relative path")
    assert len(err.splitlines()) == 1
    assert not storage.exists() and not ray.is_initialized()


# ---------------------------------------------------------------------------------------------
# Against real Ray: a two-node cluster, and a job submitted to a `ray start` head
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_connected_multi_node_cluster_counts_its_nodes(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        assert shared_data_reason({}) == "the Ray cluster this runs on has 2 nodes"
        with pytest.raises(DataLocationError, match=r"^data\.root: 'videos' is a relative path"):
            check_data_location(_config(root="videos"), environ={})
        check_data_location(_config(root="/shared/videos"), environ={})
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_a_job_submitted_like_kuberay_expands_the_heads_data_root(tmp_path, monkeypatch):
    """The RayJob path for real: bash runs `ray job submit ... -- <entrypoint>` without the data
    root in its environment (KubeRay's submitter pod); `sh -c '...'` carries $AIM_DATA_ROOT to the
    head, where it expands from the head's environment (a pod's, from the ConfigMap). The driver
    knows it is a job: a relative AIM_DATA_ROOT stops it, naming data.root."""
    from clusters import LocalHead
    from ray.job_submission import JobStatus

    monkeypatch.setenv("AIM_DATA_ROOT", "relative/k400")   # what `ray start` on the head inherits
    folder, storage = tmp_path / "job", tmp_path / "runs"
    folder.mkdir()
    (folder / "job.yaml").write_text(yaml.safe_dump({"data": {"format": "folder"},
                                                     "run": {"storage_path": str(storage)}}))
    entrypoint = """sh -c 'exec aim-video train job.yaml --set "data.root=$AIM_DATA_ROOT/videos"'"""
    head = LocalHead(num_cpus=1).start()
    try:
        submitter_env = {"PATH": head.environment()["PATH"], "HOME": str(tmp_path),
                         "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": head.token}
        submit = (f"ray job submit --address {head.dashboard_url} --submission-id data-root "
                  f"--working-dir {folder} --no-wait -- {entrypoint} ;")
        submitted = subprocess.run(["bash", "-ce", "--", submit], env=submitter_env,
                                   capture_output=True, text=True)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        client = head.client()
        deadline = time.monotonic() + 120
        while not (status := client.get_job_status("data-root")).is_terminal():
            assert time.monotonic() < deadline, f"job still {status}"
            time.sleep(1)
        logs = client.get_job_logs("data-root")
    finally:
        head.stop()
    assert status == JobStatus.FAILED, logs[-3000:]
    assert "aim-video train: data.root: 'relative/k400/videos' is a relative path, but this runs as " \
           "a Ray job" in logs, logs[-3000:]
    assert not storage.exists()
