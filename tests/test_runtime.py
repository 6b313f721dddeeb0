"""The run's runtime: the private Ray cluster listens on loopback only and leaves no process behind;
paths become absolute on the driver; the run folder remembers its MLflow run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aim_core.config import Config
from pipelines.runtime import RunFolder, absolute_paths

ROOT = Path(__file__).resolve().parents[1]

def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (ip, port) of every listening TCP socket on this machine (Linux /proc)."""
    out = {}
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":                     # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)                # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out[fields[9]] = (socket.inet_ntop(family, raw), int(hex_port, 16))
    return out


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    table, found = listening_sockets(), []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:                                # exited meanwhile
            continue
        found += [table[link[8:-1]] for link in links
                  if link.startswith("socket:[") and link[8:-1] in table]
    return found


# A fresh interpreter, as the aim-video command runs: the loopback switch is set before Ray is
# imported. It reports what the session's processes listen on, then what is left after shutdown.
PROBE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from test_runtime import listening_addresses
from pipelines import runtime
runtime.keep_private_cluster_on_loopback()
runtime.ensure_ray()
import ray
ray.get(ray.remote(lambda: 1).remote())          # a worker process, too
(session,) = runtime.private_sessions()
time.sleep(3)                                     # the agents start after the raylet
pids = runtime.session_processes(session) + [os.getpid()]
report = {"pids": pids, "listening": listening_addresses(pids)}
runtime.shutdown_ray()
report["left"] = runtime.session_processes(session)
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")
def test_the_private_cluster_listens_on_loopback_only_and_leaves_no_process_behind(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", PROBE, str(Path(__file__).parent)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["pids"]) >= 5                  # gcs, raylet, dashboard, agents, a worker
    assert len(report["listening"]) >= 5
    exposed = [(ip, port) for ip, port in report["listening"]
               if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert report["left"] == []


REUSE_PROBE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from pipelines import runtime
runtime.keep_private_cluster_on_loopback()
import ray
runtime.ensure_ray()

@ray.remote(num_cpus=0.25)
def pid():
    time.sleep(2)                                    # all at once: one process each
    return os.getpid()

cpus = int(ray.cluster_resources()["CPU"])
tasks = min(4 * cpus, cpus + 32)
first = set(ray.get([pid.remote() for _ in range(tasks)]))
time.sleep(3)                                        # the raylet kills idle workers after 1 s
second = set(ray.get([pid.remote() for _ in range(tasks)]))
runtime.shutdown_ray()
print(json.dumps({"cpus": cpus, "first": sorted(first), "kept": sorted(first & second)}))
"""


@pytest.mark.slow
def test_the_private_cluster_keeps_idle_task_processes_beyond_its_cpu_count(tmp_path):
    """Decode tasks of a fraction of a CPU run more processes than the node has CPUs; Ray's
    default keeps only as many idle ones as CPUs, so each epoch's tasks paid new processes
    importing torch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", REUSE_PROBE, str(Path(__file__).parent)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["first"]) > report["cpus"]     # more task processes than CPUs ran
    assert report["kept"] == report["first"]         # and all of them were kept


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config.from_dict({"data": {"root": "videos", "train_annotations": "s3://b/train.csv"},
                            "run": {"storage_path": "runs"}})
    fixed = absolute_paths(cfg)
    assert fixed.data.root == str(tmp_path / "videos")
    assert fixed.data.train_annotations == "s3://b/train.csv"
    assert fixed.run.storage_path == str(tmp_path / "runs")


def test_a_run_exists_once_it_remembers_its_mlflow_run(tmp_path):
    folder = RunFolder(str(tmp_path), "r1")
    assert not folder.exists() and folder.mlflow_run_id() is None
    (tmp_path / "r1" / "data").mkdir(parents=True)     # an ingest output folder alone is no run
    assert not folder.exists()
    folder.remember_mlflow_run("abc123")
    assert folder.exists() and folder.mlflow_run_id() == "abc123"
    assert RunFolder.of(Config.from_dict({"run": {"storage_path": str(tmp_path), "name": "r1"}})
                        ).mlflow_run_id() == "abc123"


def test_loopback_switch_is_left_to_a_user_who_joins_a_cluster(monkeypatch):
    from pipelines import runtime

    monkeypatch.delenv(runtime.LOOPBACK_ONLY_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runtime.keep_private_cluster_on_loopback()
    assert runtime.LOOPBACK_ONLY_ENV not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    runtime.keep_private_cluster_on_loopback()
    assert os.environ[runtime.LOOPBACK_ONLY_ENV] == "0"


def test_the_socket_table_reader_sees_a_listening_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert ("127.0.0.1", s.getsockname()[1]) in listening_sockets().values()
