"""Safe-default helpers in pipelines/cluster_config.py (no Ray cluster, no network needed)."""

from __future__ import annotations

import os
import time
import uuid
import warnings
from pathlib import Path

import pytest

from aim_core.config import Config, RunConfig
from pipelines import cluster_config as cc


# ---------------------------------------------------------------------------------------------
# dashboard host
# ---------------------------------------------------------------------------------------------

def test_dashboard_host_defaults_to_loopback(monkeypatch):
    monkeypatch.delenv("AIM_DASHBOARD_HOST", raising=False)
    assert cc.dashboard_host() == "127.0.0.1"
    monkeypatch.setenv("AIM_DASHBOARD_HOST", "  ")
    assert cc.dashboard_host() == "127.0.0.1"


def test_dashboard_host_env_override(monkeypatch):
    monkeypatch.setenv("AIM_DASHBOARD_HOST", "0.0.0.0")
    assert cc.dashboard_host() == "0.0.0.0"


def test_module_does_not_import_ray_at_top():
    import subprocess
    import sys

    code = ("import sys, pipelines.cluster_config; "
            "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------
# local storage
# ---------------------------------------------------------------------------------------------

def test_local_storage_created_and_probe_removed(tmp_path):
    target = tmp_path / "runs" / "nested"
    cc.check_storage(str(target))
    assert target.is_dir()
    assert list(target.iterdir()) == []          # the write probe is cleaned up


def test_file_uri_local_storage(tmp_path):
    cc.check_storage(f"file://{tmp_path / 'via_uri'}")
    assert (tmp_path / "via_uri").is_dir()


def test_file_used_as_folder_names_the_path(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    target = str(blocker / "runs")
    with pytest.raises(cc.StorageError) as err:
        cc.check_storage(target)
    assert target in str(err.value)
    assert "file" in str(err.value)


def test_existing_file_as_storage_path(tmp_path):
    f = tmp_path / "runs"
    f.write_text("x")
    with pytest.raises(cc.StorageError) as err:
        cc.check_storage(str(f))
    assert str(f) in str(err.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_folder_is_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(cc.StorageError) as err:
            cc.check_storage(str(ro))
        assert str(ro) in str(err.value)
        assert "writ" in str(err.value)
        with pytest.raises(cc.StorageError):
            cc.check_storage(str(ro / "sub"))
    finally:
        ro.chmod(0o700)


def test_empty_storage_path():
    with pytest.raises(cc.StorageError):
        cc.check_storage("  ")


# ---------------------------------------------------------------------------------------------
# remote storage: must fail fast and clearly without credentials or network
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _free_local_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_unreachable_endpoint_fails_fast(no_aws_credentials):
    # A closed local port: connection refused, deterministic with or without internet access.
    port = _free_local_port()
    uri = f"s3://aim-video-test-bucket/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    start = time.monotonic()
    with pytest.raises(cc.StorageError) as err:
        cc.check_storage(uri, timeout_s=4)
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert uri in message
    assert "credential" in message.lower()


def test_s3_without_credentials_or_network_fails_fast(no_aws_credentials):
    # No network here (DNS fails at once); with network and no credentials AWS answers 403 / the
    # bucket is invisible. Either way: a StorageError naming the URI, within seconds.
    uri = f"s3://aim-video-no-such-bucket-{uuid.uuid4().hex[:12]}/runs"
    start = time.monotonic()
    with pytest.raises(cc.StorageError) as err:
        cc.check_storage(uri, timeout_s=4)
    assert time.monotonic() - start < 20
    assert uri in str(err.value)
    assert "credential" in str(err.value).lower()


def test_s3_unknown_query_parameter_rejected(no_aws_credentials):
    with pytest.raises(cc.StorageError) as err:
        cc.check_storage("s3://bucket/runs?access_key=abc")
    assert "access_key" in str(err.value)


def test_remote_uri_without_bucket():
    with pytest.raises(cc.StorageError):
        cc.check_storage("s3:///runs")


def test_is_remote_uri():
    assert cc.is_remote_uri("s3://b/p") and cc.is_remote_uri("gs://b/p")
    assert not cc.is_remote_uri("/mnt/nfs/aim") and not cc.is_remote_uri("aim_runs")
    assert not cc.is_remote_uri("file:///tmp/x") and not cc.is_remote_uri("C:\\runs")


# ---------------------------------------------------------------------------------------------
# inline credentials
# ---------------------------------------------------------------------------------------------

def test_default_config_has_no_credentials():
    cc.reject_inline_credentials(Config().to_dict())
    cc.reject_inline_credentials(Config())          # dataclasses are accepted too


@pytest.mark.parametrize("key", ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "password",
                                 "db_password", "token", "api_key", "apiKey", "mlflow_tracking_password",
                                 "client-secret", "aws_session_token", "credentials"])
def test_secret_keys_rejected(key):
    cfg = {"run": {"name": "x", key: "s3cr3t-value"}}
    with pytest.raises(cc.InlineCredentialsError) as err:
        cc.reject_inline_credentials(cfg)
    message = str(err.value)
    assert f"run.{key}" in message
    assert "s3cr3t-value" not in message                      # never echo the secret
    assert "environment" in message and "credential chain" in message


@pytest.mark.parametrize("value,label", [
    ("AKIAIOSFODNN7EXAMPLE", "AWS access key"),
    ("postgresql://mlflow:hunter2@db.internal/mlflow", "user:password"),
    ("https://alice:pw@mlflow.example.com", "user:password"),
])
def test_secret_values_rejected(value, label):
    with pytest.raises(cc.InlineCredentialsError) as err:
        cc.reject_inline_credentials({"run": {"tracking_uri": value}})
    assert "run.tracking_uri" in str(err.value) and label in str(err.value)
    assert value not in str(err.value)


def test_harmless_keys_and_empty_secrets_pass():
    cc.reject_inline_credentials({
        "model": {"max_tokens": 8, "tokenizer": "bpe"},
        "run": {"tracking_uri": "http://127.0.0.1:5000", "storage_path": "s3://bucket/runs",
                "password": None, "token": ""},
        "env": [{"name": "MLFLOW_TRACKING_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": "auth", "key": "MLFLOW_TRACKING_PASSWORD"}}}],
    })


def test_nested_lists_are_scanned():
    with pytest.raises(cc.InlineCredentialsError) as err:
        cc.reject_inline_credentials({"a": [{"b": {"api_token": "x"}}]})
    assert "a[0].b.api_token" in str(err.value)


# ---------------------------------------------------------------------------------------------
# heterogeneous scheduling
# ---------------------------------------------------------------------------------------------

def test_ingest_is_cpu_only():
    run = RunConfig(ingest_cpus=2.0)
    assert cc.ingest_resources(run) == {"num_cpus": 2.0, "num_gpus": 0}
    # A cluster without the decode resource (a laptop) gets no custom resource request.
    assert "resources" not in cc.ingest_resources(run, {"CPU": 8.0, "GPU": 1.0})


def test_ingest_targets_decode_nodes_when_present():
    args = cc.ingest_resources(RunConfig(), {"CPU": 64.0, cc.DECODE_RESOURCE: 1000.0})
    assert args["num_gpus"] == 0
    assert 0 < args["resources"][cc.DECODE_RESOURCE] < 1


def test_ingest_accepts_mapping():
    assert cc.ingest_resources({"ingest_cpus": 0.5})["num_cpus"] == 0.5
    with pytest.raises(ValueError):
        cc.ingest_resources({"ingest_cpus": 0})


def test_train_auto_gpu_follows_cluster():
    run = RunConfig(num_workers=4, cpus_per_worker=6, gpus_per_worker=1, use_gpu=None)
    on_gpus = cc.train_scaling(run, gpus_available=8)
    assert on_gpus == {"num_workers": 4, "use_gpu": True,
                       "resources_per_worker": {"CPU": 6.0, "GPU": 1.0}}
    on_cpus = cc.train_scaling(run, gpus_available=0)
    assert on_cpus["use_gpu"] is False
    assert on_cpus["resources_per_worker"] == {"CPU": 6.0}


def test_train_explicit_use_gpu_wins():
    assert cc.train_scaling(RunConfig(use_gpu=False), gpus_available=8)["use_gpu"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = cc.train_scaling(RunConfig(use_gpu=True, gpus_per_worker=0.5), gpus_available=0)
    assert out["use_gpu"] is True and out["resources_per_worker"]["GPU"] == 0.5
    assert any("autoscaler" in str(w.message) for w in caught)


def test_train_scaling_is_valid_scaling_config():
    ray_train = pytest.importorskip("ray.train")
    kwargs = cc.train_scaling(RunConfig(num_workers=2, use_gpu=None), gpus_available=0)
    cfg = ray_train.ScalingConfig(**kwargs)
    assert cfg.num_workers == 2 and cfg.use_gpu is False
