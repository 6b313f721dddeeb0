"""Checks before any Ray work: storage that can hold a run, configs free of secrets (no Ray cluster,
no network needed)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from aim_core.config import Config
from pipelines import preflight as pf


def test_module_does_not_import_ray_at_top():
    import subprocess
    import sys

    code = ("import sys, pipelines.preflight; "
            "assert 'ray' not in sys.modules and 'mlflow' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------
# local storage
# ---------------------------------------------------------------------------------------------

def test_local_storage_created_and_probe_removed(tmp_path):
    target = tmp_path / "runs" / "nested"
    pf.check_storage(str(target))
    assert target.is_dir()
    assert list(target.iterdir()) == []          # the write probe is cleaned up


def test_file_uri_local_storage(tmp_path):
    pf.check_storage(f"file://{tmp_path / 'via_uri'}")
    assert (tmp_path / "via_uri").is_dir()


def test_file_used_as_folder_names_the_path(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    target = str(blocker / "runs")
    with pytest.raises(pf.StorageError) as err:
        pf.check_storage(target)
    assert target in str(err.value)
    assert "file" in str(err.value)


def test_existing_file_as_storage_path(tmp_path):
    f = tmp_path / "runs"
    f.write_text("x")
    with pytest.raises(pf.StorageError) as err:
        pf.check_storage(str(f))
    assert str(f) in str(err.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_folder_is_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(pf.StorageError) as err:
            pf.check_storage(str(ro))
        assert str(ro) in str(err.value)
        assert "writ" in str(err.value)
        with pytest.raises(pf.StorageError):
            pf.check_storage(str(ro / "sub"))
    finally:
        ro.chmod(0o700)


def test_empty_storage_path():
    with pytest.raises(pf.StorageError):
        pf.check_storage("  ")


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
    with pytest.raises(pf.StorageError) as err:
        pf.check_storage(uri, timeout_s=4)
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert uri in message
    assert "credential" in message.lower()


def test_s3_without_credentials_or_network_fails_fast(no_aws_credentials):
    # No network here (DNS fails at once); with network and no credentials AWS answers 403 / the
    # bucket is invisible. Either way: a StorageError naming the URI, within seconds.
    uri = f"s3://aim-video-no-such-bucket-{uuid.uuid4().hex[:12]}/runs"
    start = time.monotonic()
    with pytest.raises(pf.StorageError) as err:
        pf.check_storage(uri, timeout_s=4)
    assert time.monotonic() - start < 20
    assert uri in str(err.value)
    assert "credential" in str(err.value).lower()


def test_s3_unknown_query_parameter_rejected(no_aws_credentials):
    with pytest.raises(pf.StorageError) as err:
        pf.check_storage("s3://bucket/runs?access_key=abc")
    assert "access_key" in str(err.value)


def test_remote_uri_without_bucket():
    with pytest.raises(pf.StorageError):
        pf.check_storage("s3:///runs")


def test_only_plain_paths_and_file_uris_are_checked_as_local_folders(tmp_path):
    from aim_core.storage import scheme

    assert scheme("s3://b/p") == "s3" and scheme("GS://b/p") == "gs"
    assert scheme("/mnt/nfs/aim") is None and scheme("aim_runs") is None
    assert scheme("file:///tmp/x") == "file" and scheme("C:\\runs") is None


# ---------------------------------------------------------------------------------------------
# inline credentials
# ---------------------------------------------------------------------------------------------

def test_default_config_has_no_credentials():
    pf.reject_inline_credentials(Config().to_dict())
    pf.reject_inline_credentials(Config())          # dataclasses are accepted too


@pytest.mark.parametrize("key", ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "password",
                                 "db_password", "token", "api_key", "apiKey", "mlflow_tracking_password",
                                 "client-secret", "aws_session_token", "credentials"])
def test_secret_keys_rejected(key):
    cfg = {"run": {"name": "x", key: "s3cr3t-value"}}
    with pytest.raises(pf.InlineCredentialsError) as err:
        pf.reject_inline_credentials(cfg)
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
    with pytest.raises(pf.InlineCredentialsError) as err:
        pf.reject_inline_credentials({"run": {"tracking_uri": value}})
    assert "run.tracking_uri" in str(err.value) and label in str(err.value)
    assert value not in str(err.value)


def test_harmless_keys_and_empty_secrets_pass():
    pf.reject_inline_credentials({
        "model": {"max_tokens": 8, "tokenizer": "bpe"},
        "run": {"tracking_uri": "http://127.0.0.1:5000", "storage_path": "s3://bucket/runs",
                "password": None, "token": ""},
        "env": [{"name": "MLFLOW_TRACKING_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": "auth", "key": "MLFLOW_TRACKING_PASSWORD"}}}],
    })


def test_nested_lists_are_scanned():
    with pytest.raises(pf.InlineCredentialsError) as err:
        pf.reject_inline_credentials({"a": [{"b": {"api_token": "x"}}]})
    assert "a[0].b.api_token" in str(err.value)
