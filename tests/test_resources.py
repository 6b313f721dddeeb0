"""What work asks Ray for: decode tasks on CPU nodes, training on GPUs, trials that fit, the dashboard
host (no Ray cluster needed)."""

from __future__ import annotations

import warnings

import pytest

from aim_core.config import ConfigError, RunConfig
from pipelines import resources as rs


# ---------------------------------------------------------------------------------------------
# dashboard host
# ---------------------------------------------------------------------------------------------
def test_dashboard_host_defaults_to_loopback(monkeypatch):
    monkeypatch.delenv("AIM_DASHBOARD_HOST", raising=False)
    assert rs.dashboard_host() == "127.0.0.1"
    monkeypatch.setenv("AIM_DASHBOARD_HOST", "  ")
    assert rs.dashboard_host() == "127.0.0.1"


def test_dashboard_host_env_override(monkeypatch):
    monkeypatch.setenv("AIM_DASHBOARD_HOST", "0.0.0.0")
    assert rs.dashboard_host() == "0.0.0.0"


# ---------------------------------------------------------------------------------------------
# heterogeneous scheduling
# ---------------------------------------------------------------------------------------------

def test_ingest_is_cpu_only():
    run = RunConfig(ingest_cpus=2.0)
    assert rs.ingest_resources(run) == {"num_cpus": 2.0, "num_gpus": 0}
    # A cluster without the decode resource (a laptop) gets no custom resource request.
    assert "resources" not in rs.ingest_resources(run, {"CPU": 8.0, "GPU": 1.0})


def test_ingest_targets_decode_nodes_when_present():
    args = rs.ingest_resources(RunConfig(), {"CPU": 64.0, rs.DECODE_RESOURCE: 1000.0})
    assert args["num_gpus"] == 0
    assert 0 < args["resources"][rs.DECODE_RESOURCE] < 1


def test_a_trial_that_cannot_fit_the_cluster_is_refused_with_the_fields_to_change():
    assert rs.trial_concurrency(RunConfig(cpus_per_worker=0.5, ingest_cpus=0.5), {"CPU": 4}) == 2
    with pytest.raises(ConfigError, match="run.cpus_per_worker"):
        rs.trial_concurrency(RunConfig(cpus_per_worker=1.0, ingest_cpus=1.0), {"CPU": 2})
    gpus = RunConfig(num_workers=2, gpus_per_worker=1.0, cpus_per_worker=1.0, use_gpu=True)
    assert rs.trial_concurrency(gpus, {"CPU": 32, "GPU": 4}) == 2


def test_train_auto_gpu_follows_cluster():
    run = RunConfig(num_workers=4, cpus_per_worker=6, gpus_per_worker=1, use_gpu=None)
    on_gpus = rs.train_scaling(run, gpus_available=8)
    assert on_gpus == {"num_workers": 4, "use_gpu": True,
                       "resources_per_worker": {"CPU": 6.0, "GPU": 1.0}}
    on_cpus = rs.train_scaling(run, gpus_available=0)
    assert on_cpus["use_gpu"] is False
    assert on_cpus["resources_per_worker"] == {"CPU": 6.0}


def test_train_explicit_use_gpu_wins():
    assert rs.train_scaling(RunConfig(use_gpu=False), gpus_available=8)["use_gpu"] is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = rs.train_scaling(RunConfig(use_gpu=True, gpus_per_worker=0.5), gpus_available=0)
    assert out["use_gpu"] is True and out["resources_per_worker"]["GPU"] == 0.5
    assert any("autoscaler" in str(w.message) for w in caught)


def test_train_scaling_is_valid_scaling_config():
    ray_train = pytest.importorskip("ray.train")
    kwargs = rs.train_scaling(RunConfig(num_workers=2, use_gpu=None), gpus_available=0)
    cfg = ray_train.ScalingConfig(**kwargs)
    assert cfg.num_workers == 2 and cfg.use_gpu is False
