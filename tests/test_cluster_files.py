"""The cluster/ deliverables parse, validate and run as written (fast; no cluster, no network).

- every KubeRay document validates strictly against KubeRay's own CRD schemas (tests/schemas/);
- the RayJob's entrypoint, through the shells it passes on the way to the driver, loads a config
  whose data location and storage path come from the aim-video-config ConfigMap;
- the Ray version of constraints.txt (what the image and CI install) is the manifests' rayVersion
  and part of the image tag everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from kuberay_crds import KUBERAY_VERSION, SCHEMA_FILES, schema_errors

from aim_core.config import Config
from pipelines.cli import build_parser
from pipelines.preflight import (
    DATA_PATH_FIELDS,
    RAY_JOB_DRIVER_ENV,
    check_data_location,
    reject_inline_credentials,
)
from pipelines.resources import DECODE_RESOURCE

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
CONFIGS = ROOT / "configs"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


PIN_LINES = [line.split("#", 1)[0].strip()
             for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line.split("#", 1)[0].strip()]
PINS = {_normalise(line.partition("==")[0]): line.partition("==")[2] for line in PIN_LINES}
RAY_VERSION = PINS["ray"]
IMAGE_TAG = f"{PYPROJECT['project']['version']}-ray{RAY_VERSION}"
IMAGE = f"ghcr.io/aim-video/aim-video:{IMAGE_TAG}"

YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def _docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    found = [d for d in _docs(path) if isinstance(d, dict) and d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["template"]["spec"]["containers"]


# ---------------------------------------------------------------------------------------------
# everything parses
# ---------------------------------------------------------------------------------------------

def test_expected_files_exist():
    for rel in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/common.yaml", "aws.yaml",
                "gcp.yaml", "runtime_env.yaml", "Dockerfile", "LAPTOP_TO_CLUSTER.md"):
        assert (CLUSTER / rel).is_file(), rel


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = _docs(path)
    assert docs, f"{path} is empty"


# ---------------------------------------------------------------------------------------------
# KubeRay
# ---------------------------------------------------------------------------------------------

def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == RAY_VERSION, \
        f"{where}: rayVersion {spec['rayVersion']!r} but constraints.txt pins ray=={RAY_VERSION}"
    assert spec["enableInTreeAutoscaling"] is True, where
    assert spec.get("authOptions", {}).get("mode") == "token", where
    head = spec["headGroupSpec"]
    # Not exposed publicly: ClusterIP Service, no ingress; dashboard reached by port-forward.
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
    assert not head.get("enableIngress", False), where
    assert head["rayStartParams"].get("num-cpus") == "0", where
    for c in _containers(head):
        assert c["image"] == IMAGE
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-decode", "gpu-train"}, where
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        assert group["maxReplicas"] >= 1, name
        for value in group["rayStartParams"].values():
            assert isinstance(value, str), f"{name}: rayStartParams values must be strings"
        for c in _containers(group):
            assert c["image"] == IMAGE, name
            limits, requests = c["resources"]["limits"], c["resources"]["requests"]
            assert "cpu" in limits and "memory" in limits, name
            if name == "gpu-train":
                assert int(limits["nvidia.com/gpu"]) >= 1
                assert requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
            else:
                assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests
    decode = groups["cpu-decode"]["rayStartParams"]
    assert decode.get("num-gpus") == "0"
    assert DECODE_RESOURCE in decode.get("resources", ""), "ingest targets CPU nodes by this resource"
    # The ConfigMap's settings reach every Ray container by reference, never as inline values.
    settings = _configmap()["data"]
    for pod in [head, *groups.values()]:
        for c in _containers(pod):
            env = {e["name"]: e for e in c.get("env", [])}
            for name in ("MLFLOW_TRACKING_URI", "AIM_DATA_ROOT", "AIM_STORAGE_PATH"):
                ref = env[name]["valueFrom"]["configMapKeyRef"]
                assert ref == {"name": "aim-video-config", "key": name}, (where, name)
                assert name in settings, f"common.yaml's ConfigMap has no {name}"
            for name, e in env.items():
                if "PASSWORD" in name or "TOKEN" in name or "SECRET" in name:
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], name


def test_raycluster_manifest():
    rc = _kind(CLUSTER / "kuberay" / "raycluster.yaml", "RayCluster")
    assert rc["apiVersion"] == "ray.io/v1"
    _check_ray_cluster_spec(rc["spec"], "raycluster.yaml")


def test_raycluster_decode_resource_is_valid_ray_syntax():
    import json

    rc = _kind(CLUSTER / "kuberay" / "raycluster.yaml", "RayCluster")
    group = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "cpu-decode")
    raw = group["rayStartParams"]["resources"]
    # KubeRay passes this to `ray start --resources=...`: a quoted JSON object.
    assert raw.startswith('"') and raw.endswith('"')
    parsed = json.loads(raw[1:-1].replace('\\"', '"'))
    assert parsed[DECODE_RESOURCE] > 0


def test_rayjob_manifest():
    rj = _kind(CLUSTER / "kuberay" / "rayjob.yaml", "RayJob")
    assert rj["apiVersion"] == "ray.io/v1"
    spec = rj["spec"]
    shell, flag, script = shlex.split(spec["entrypoint"])      # sh -c '...': expands on the head
    argv = shlex.split(script)
    assert (shell, flag, argv[:3]) == ("sh", "-c", ["exec", "aim-video", "train"])
    argv = argv[1:]
    assert argv[2].startswith("configs/") and argv[2].endswith(".yaml")
    assert not any(a.startswith("run.storage_path=") for a in argv), "from AIM_STORAGE_PATH"
    assert "--register" in argv
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict)
    assert not {"pip", "uv", "conda"} & set(runtime_env), "the image carries the dependencies"
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "rayClusterSpec" in spec:
        _check_ray_cluster_spec(spec["rayClusterSpec"], "rayjob.yaml")
        rc = _kind(CLUSTER / "kuberay" / "raycluster.yaml", "RayCluster")
        assert spec["rayClusterSpec"] == rc["spec"], "keep rayjob.yaml's cluster in sync with raycluster.yaml"


def _configmap() -> dict:
    return _kind(CLUSTER / "kuberay" / "common.yaml", "ConfigMap")


def test_common_objects_referenced_exist():
    docs = _docs(CLUSTER / "kuberay" / "common.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ConfigMap", "aim-video-config") in kinds
    assert ("ServiceAccount", "aim-video") in kinds
    assert not any(d["kind"] == "Secret" for d in docs), "Secrets are created out of band"
    data = _configmap()["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    assert "MLFLOW_TRACKING_URI" in data
    for name in ("AIM_DATA_ROOT", "AIM_STORAGE_PATH"):
        assert re.match(r"^(s3|gs)://[^/]+/.+|^/", data[name]), f"{name}: a URI or an absolute path"
    text = (CLUSTER / "kuberay" / "common.yaml").read_text()
    comment_above = text[:text.index("\n  AIM_DATA_ROOT:")].rsplit("\ndata:", 1)[1]
    assert "EDIT THIS" in comment_above, "the data location is marked as the value to edit"


# ---------------------------------------------------------------------------------------------
# KubeRay's own CRD schemas, strictly
# ---------------------------------------------------------------------------------------------

def _kuberay_documents() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d['kind']}", d) for p in KUBERAY_FILES for d in _docs(p)
            if d.get("apiVersion", "").startswith("ray.io/")]


@pytest.mark.parametrize("where,doc", _kuberay_documents(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_kuberay_documents_validate_against_the_crd_schema(where, doc):
    assert doc["apiVersion"] == "ray.io/v1", where
    assert doc["kind"] in SCHEMA_FILES, f"{where}: no vendored KubeRay schema for {doc['kind']}"
    errors = schema_errors(doc)
    assert not errors, f"{where} is not a valid {doc['kind']} for KubeRay {KUBERAY_VERSION}:\n" + \
        "\n".join(errors)


def test_the_kuberay_documents_are_the_cluster_and_the_job():
    assert sorted(where for where, _ in _kuberay_documents()) == \
        ["raycluster.yaml:RayCluster", "rayjob.yaml:RayJob"]


def test_the_schema_check_refuses_unknown_fields_and_wrong_types():
    rc = _kind(CLUSTER / "kuberay" / "raycluster.yaml", "RayCluster")
    container = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = "Always"                           # a typo, deep in a pod
    rc["spec"]["workerGroupSpecs"][0]["replicas"] = "2"               # a string for an int32
    rc["spec"]["autoscalerOptions"]["upscalingMode"] = "Fast"         # not in the enum
    rc["metadata"]["label"] = {"a": "b"}                              # not ObjectMeta
    rc["spec"]["rayStartParams"] = {"num-cpus": "1"}                  # head-only field at the top
    errors = "\n".join(schema_errors(rc))
    for fragment in ("imagePullPolcy", "workerGroupSpecs.0.replicas", "upscalingMode",
                     "'label' was unexpected", "'rayStartParams' was unexpected"):
        assert fragment in errors, f"{fragment!r} not reported in:\n{errors}"
    rj = _kind(CLUSTER / "kuberay" / "rayjob.yaml", "RayJob")
    rj["spec"]["submitterConfig"]["backofLimit"] = 2
    assert any("backofLimit" in e for e in schema_errors(rj))


# ---------------------------------------------------------------------------------------------
# The RayJob's entrypoint reaches the ConfigMap's data set and storage
# ---------------------------------------------------------------------------------------------

def _shell_words(command: str, env: dict[str, str]) -> list[str]:
    """The words bash makes of ``command`` (expansion, quote removal, field splitting)."""
    script = f'set -- {command}\nprintf "%s\\0" "$@"'
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.split("\0")[:-1]


def driver_argv(entrypoint: str, pod_env: dict[str, str], probe_dir: Path, mode: str) -> list[str]:
    """The arguments ``aim-video`` gets from a RayJob's entrypoint, through the real shells:

    - K8sJobMode: KubeRay's submitter pod runs ``/bin/bash -ce -- "... ray job submit ... --
      <entrypoint> ;"`` (kuberay ray-operator/controllers/ray/common/job.go, BuildJobSubmitCommand)
      without the ConfigMap's settings; ``ray job submit`` sends ``shlex.join`` of the words it
      got (ray/dashboard/modules/job/cli.py);
    - HTTPMode: the operator sends the entrypoint as it is;
    - either way Ray's job supervisor runs it as ``Popen(entrypoint, shell=True)`` on the head,
      in the head pod's environment (ConfigMap settings included).

    ``probe_dir`` holds an ``aim-video`` that prints its arguments: what the shells hand over.
    """
    probe = probe_dir / "aim-video"
    probe.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    probe.chmod(0o755)
    path = {"PATH": f"{probe_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
    submitted = shlex.join(_shell_words(entrypoint, path)) if mode == "K8sJobMode" else entrypoint
    done = subprocess.run(["/bin/sh", "-c", submitted], env={**path, **pod_env},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _job_config(entrypoint: str, tmp_path: Path, monkeypatch, mode: str = "K8sJobMode") -> Config:
    """The config ``aim-video train`` loads on the head from ``entrypoint``: the image's files
    (its working folder has this checkout's layout) and the ``--set`` values, in the pod's env."""
    settings = _configmap()["data"]
    args = build_parser().parse_args(driver_argv(entrypoint, settings, tmp_path, mode))
    assert args.command == "train"
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return Config.load(ROOT / args.config, dict(args.overrides))


def test_the_image_runs_the_job_in_a_folder_with_the_configs():
    rj = _kind(CLUSTER / "kuberay" / "rayjob.yaml", "RayJob")
    workdir = yaml.safe_load(rj["spec"]["runtimeEnvYAML"])["working_dir"]
    instructions = _dockerfile_instructions()
    assert ("WORKDIR", workdir) in instructions
    assert ("COPY", "configs ./configs") in instructions


@pytest.mark.parametrize("mode", ["K8sJobMode", "HTTPMode"])
def test_the_rayjob_entrypoint_reaches_the_configmaps_data_and_storage(mode, tmp_path, monkeypatch):
    spec = _kind(CLUSTER / "kuberay" / "rayjob.yaml", "RayJob")["spec"]
    cfg = _job_config(spec["entrypoint"], tmp_path, monkeypatch, mode)
    settings = _configmap()["data"]
    root = settings["AIM_DATA_ROOT"]
    assert cfg.data.format == "kinetics_csv"
    assert (cfg.data.root, cfg.data.train_annotations, cfg.data.val_annotations) == \
        (f"{root}/videos", f"{root}/annotations/train.csv", f"{root}/annotations/validate.csv")
    for name in DATA_PATH_FIELDS:
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        assert value is None or value.startswith(root), f"{name}: {value!r} not under {root}"
    assert cfg.run.storage_path == settings["AIM_STORAGE_PATH"]
    assert (cfg.run.name, cfg.run.num_workers, cfg.run.use_gpu) == ("k400-vitb16-8f", 8, True)
    # What the driver checks before anything starts: a job on a cluster, with absolute/URI paths.
    check_data_location(cfg, environ={RAY_JOB_DRIVER_ENV: "{}", "RAY_ADDRESS": "10.0.0.2:6379"})


def test_without_the_driver_shell_the_data_root_vanishes_in_the_submitter(tmp_path, monkeypatch):
    """Why the entrypoint is `sh -c '...'`: given bare, $AIM_DATA_ROOT is expanded by the
    submitter pod's bash, which does not have it, and the driver gets `/videos`."""
    spec = _kind(CLUSTER / "kuberay" / "rayjob.yaml", "RayJob")["spec"]
    shell, flag, script = shlex.split(spec["entrypoint"])
    assert (shell, flag) == ("sh", "-c") and script.startswith("exec aim-video ")
    cfg = _job_config(script.removeprefix("exec "), tmp_path, monkeypatch)
    assert cfg.data.root == "/videos"


def test_aim_storage_path_is_the_default_storage_path(monkeypatch, tmp_path):
    monkeypatch.setenv("AIM_STORAGE_PATH", "s3://bucket/runs")
    preset = CONFIGS / "k400_vitb16_8f.yaml"
    assert Config.from_dict({}).run.storage_path == "s3://bucket/runs"
    assert Config.load(preset).run.storage_path == "s3://bucket/runs"
    assert Config.load(preset, {"run.storage_path": "gs://b/other"}).run.storage_path == "gs://b/other"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("run:\n  storage_path: /mnt/nfs/runs\n")
    assert Config.load(explicit).run.storage_path == "/mnt/nfs/runs"
    # The demo keeps its results next to its local data set, wherever it runs.
    assert Config.load(ROOT / "pipelines" / "demo.yaml").run.storage_path == "aim_runs"
    monkeypatch.setenv("AIM_STORAGE_PATH", " ")
    assert Config.from_dict({}).run.storage_path == "aim_runs"
    monkeypatch.delenv("AIM_STORAGE_PATH")
    assert Config.from_dict({}).run.storage_path == "aim_runs"


def test_no_preset_hides_aim_storage_path():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        run = (yaml.safe_load(path.read_text()) or {}).get("run") or {}
        assert "storage_path" not in run, f"{path.relative_to(ROOT)} sets run.storage_path, " \
            "so $AIM_STORAGE_PATH would never apply to it"


# ---------------------------------------------------------------------------------------------
# Cluster launcher
# ---------------------------------------------------------------------------------------------

LAUNCHERS = {"aws.yaml": ("aws", "IamInstanceProfile"), "gcp.yaml": ("gcp", "serviceAccounts")}


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config(name):
    provider, identity_key = LAUNCHERS[name]
    cfg = yaml.safe_load((CLUSTER / name).read_text())
    assert cfg["provider"]["type"] == provider
    assert cfg["docker"]["image"] == IMAGE
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] > 0
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    decode, train = types["cpu-decode"], types["gpu-train"]
    assert decode["resources"].get("GPU", 0) == 0 and decode["resources"][DECODE_RESOURCE] > 0
    assert train["resources"]["GPU"] >= 1
    for t in (decode, train):
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"]
        assert identity_key in t["node_config"], "node identity instead of keys"
    assert "file_mounts" in cfg and "setup_commands" in cfg
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmds
    worker_cmds = " ".join(cfg["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker_cmds


def test_aws_uses_expected_instance_families():
    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    types = cfg["available_node_types"]
    assert types["cpu-decode"]["node_config"]["InstanceType"].startswith("m6i.")
    assert types["gpu-train"]["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4d.", "p5."))
    arn = types["gpu-train"]["node_config"]["IamInstanceProfile"]["Arn"]
    assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn


def test_gcp_uses_expected_machine_families():
    cfg = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())
    types = cfg["available_node_types"]
    assert types["cpu-decode"]["node_config"]["machineType"].startswith("n2-")
    gpu = types["gpu-train"]["node_config"]
    assert gpu["machineType"].startswith(("a2-", "a3-", "g2-")) or gpu.get("guestAccelerators")


# Fields of the Compute API's Scheduling object (compute/docs/reference/rest/v1/instances).
GCE_SCHEDULING_FIELDS = {
    "onHostMaintenance", "automaticRestart", "preemptible", "nodeAffinities", "minNodeCpus",
    "locationHint", "availabilityDomain", "provisioningModel", "instanceTerminationAction",
    "localSsdRecoveryTimeout", "maxRunDuration", "terminationTime", "onInstanceStopAction",
}


def test_gcp_scheduling_is_the_compute_api_object():
    """The launcher sends node_config as the instances.insert body: `scheduling` is one object
    (ray-project/ray#46248: Ray's own examples once gave a list). GPU VMs cannot live-migrate, and
    preemptible or Spot VMs can neither migrate nor restart automatically."""
    types = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())["available_node_types"]
    for name, node_type in types.items():
        config = node_type["node_config"]
        scheduling = config.get("scheduling", {})
        assert isinstance(scheduling, dict), f"{name}: scheduling must be a mapping: {scheduling!r}"
        assert set(scheduling) <= GCE_SCHEDULING_FIELDS, set(scheduling) - GCE_SCHEDULING_FIELDS
        gpu = config["machineType"].startswith(("a2-", "a3-", "g2-")) \
            or bool(config.get("guestAccelerators"))
        spot = scheduling.get("preemptible") or scheduling.get("provisioningModel") == "SPOT"
        if gpu or spot:
            assert scheduling.get("onHostMaintenance") == "TERMINATE", name
        if spot:
            assert scheduling.get("automaticRestart") is False, name
    assert types["gpu-train"]["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_config_validates_with_ray(name):
    """Ray's own schema and validation (the same checks `ray up` runs before touching the cloud)."""
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(yaml.safe_load((CLUSTER / name).read_text())))


def test_runtime_env():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert not {"pip", "uv", "conda", "py_executable"} & set(env)
    assert ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())


# ---------------------------------------------------------------------------------------------
# No secrets anywhere in cluster/ or configs/
# ---------------------------------------------------------------------------------------------

_SECRET_TEXT = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS access key id"),
    (re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*[\"']?(?![<$\"'{])[^\s\"'#]+"), "AWS secret key"),
    (re.compile(r"(?i)aws_session_token\s*[:=]\s*[\"']?(?![<$\"'{])[^\s\"'#]+"), "AWS session token"),
    (re.compile(r"(?i)(?<![a-z0-9])(password|passwd)\s*[:=]\s*[\"']?(?![<$\"'{])[^\s\"'#,}]+"), "password"),
    (re.compile(r"(?i)(?<![a-z0-9])(api_key|apikey|auth_token|client_secret)\s*[:=]\s*[\"']?(?![<$\"'{])[^\s\"'#,}]+"),
     "token/API key"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "private key"),
    (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^/\s:@<]+:[^/\s@<$]+@"), "URI with user:password"),
    (re.compile(r"\bghp_[A-Za-z0-9]{30,}\b|\bhf_[A-Za-z0-9]{30,}\b"), "access token"),
]


def _text_files() -> list[Path]:
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    if CONFIGS.is_dir():
        files += [p for p in CONFIGS.rglob("*") if p.is_file()]
    return sorted(files)


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_secrets_text(path):
    text = path.read_text(errors="replace")
    for pattern, label in _SECRET_TEXT:
        match = pattern.search(text)
        assert match is None, f"{path.relative_to(ROOT)}: looks like an inline {label}: {match.group(0)[:40]!r}"


def test_secret_scanner_catches_examples():
    bad = ["aws_secret_access_key: wJalrXUtnFEMI/K7MDENG", "password: hunter2",
           "MLFLOW_TRACKING_PASSWORD=abc123", "AKIAIOSFODNN7EXAMPLE",
           "uri: postgresql://mlflow:pw@db/mlflow", 'api_key: "sk-123"']
    good = ["password: <your password>", "--from-literal=MLFLOW_TRACKING_PASSWORD=\"$MLFLOW_PW\"",
            "key: MLFLOW_TRACKING_PASSWORD, optional: true", "password: ${PW}",
            "s3://bucket/runs", "postgresql://mlflow@db.internal/mlflow"]
    for line in bad:
        assert any(p.search(line) for p, _ in _SECRET_TEXT), line
    for line in good:
        assert not any(p.search(line) for p, _ in _SECRET_TEXT), line


@pytest.mark.parametrize("path", [p for p in YAML_FILES] + sorted(CONFIGS.glob("*.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_inline_secret_fields(path):
    for doc in _docs(path):
        reject_inline_credentials(doc, where=str(path.relative_to(ROOT)))


# ---------------------------------------------------------------------------------------------
# Dockerfile installs pyproject's dependency set at constraints.txt's versions
# ---------------------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (CLUSTER / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_installs_pyproject_dependency_set_at_the_pinned_versions():
    deps = PYPROJECT["project"]["dependencies"]
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    instructions = _dockerfile_instructions()
    base = next(rest for op, rest in instructions if op == "FROM")
    assert base.startswith(("python:3.11", "nvidia/cuda")), base
    copies = [rest for op, rest in instructions if op == "COPY"]
    runs = [rest for op, rest in instructions if op == "RUN"]
    for name in ("pyproject.toml", "constraints.txt"):
        assert any(name in c.split() for c in copies), f"{name} must be copied"
    for pkg in (p.rstrip("*") for p in packages):
        assert any(c.split()[0] == pkg for c in copies), f"package {pkg} not copied"
    pip_cmds = [part.strip() for r in runs for part in r.split("&&")
                if re.search(r"\bpip3? install\b", part)]
    pinned_install = r"(python3? -m )?pip3? install (--no-cache-dir )?-c constraints\.txt \."
    assert any(re.fullmatch(pinned_install, c) for c in pip_cmds), \
        f"expected `pip install -c constraints.txt .`, got {pip_cmds}"
    # Nothing else is pip-installed: the image's set is pyproject's [project].dependencies, pinned.
    assert len(pip_cmds) == 1, pip_cmds
    names = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() for d in deps}
    assert {"torch", "ray", "av", "mlflow", "pyarrow"} <= names
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignore, "the build context must include constraints.txt"


def test_dockerfile_runs_as_non_root():
    users = [rest for op, rest in _dockerfile_instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")


# ---------------------------------------------------------------------------------------------
# One Ray version: constraints.txt, the manifests' rayVersion, the image tag; CI installs the pins
# ---------------------------------------------------------------------------------------------

def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])


def test_constraints_pin_every_dependency_and_agree_with_pyproject():
    loose = [line for line in PIN_LINES if not re.fullmatch(r"[A-Za-z0-9][\w.\-]*==[\w.+!]+", line)]
    assert not loose, f"constraints.txt: expected name==version lines, got {loose}"
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"].values()
    requirements = project["dependencies"] + [r for extra in extras for r in extra]
    unpinned = [r for r in requirements if _requirement_name(r) not in PINS]
    assert not unpinned, f"constraints.txt pins no version of {unpinned}: regenerate it (header)"
    for requirement in requirements:
        exact = re.search(r"==\s*([^\s,;]+)", requirement)
        if exact:
            assert PINS[_requirement_name(requirement)] == exact.group(1), requirement
    assert (PINS["torch"], PINS["torchvision"]) == ("2.14.1", "0.29.1")


def _values(node, key: str) -> list:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + \
            [x for v in node.values() for x in _values(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _values(v, key)]
    return []


def test_ray_version_image_tag_and_pin_agree():
    """Every rayVersion is the pinned Ray; every image is <version>-ray<pinned Ray>, in the
    manifests, the launcher configs and every mention in the docs and comments."""
    kuberay = [d for p in KUBERAY_FILES for d in _docs(p)]
    assert set(_values(kuberay, "rayVersion")) == {RAY_VERSION}
    assert len(_values(kuberay, "rayVersion")) == 2, "raycluster.yaml and rayjob.yaml"
    launchers = [yaml.safe_load((CLUSTER / name).read_text()) for name in LAUNCHERS]
    images = _values(kuberay, "image") + [cfg["docker"]["image"] for cfg in launchers]
    assert images and set(images) == {IMAGE}, set(images)
    texts = [p for p in CLUSTER.rglob("*") if p.is_file()] + [ROOT / "README.md"]
    for path in texts:
        for tag in re.findall(r"aim-video:([A-Za-z0-9][\w.\-]*)", path.read_text()):
            assert tag == IMAGE_TAG, f"{path.relative_to(ROOT)}: image tag {tag!r}, " \
                f"expected {IMAGE_TAG!r} (pyproject version + constraints.txt's Ray)"


def test_ci_runs_the_readme_test_command_which_installs_the_pins():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("python3.11 -m venv")]
    assert len(commands) == 2, commands
    for command in commands:
        assert ".venv/bin/pip install -q -c constraints.txt -e '.[test]'" in command, command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[1], "CI runs exactly README's test command"
