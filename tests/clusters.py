"""Shared pieces of the cluster tests (test_job_submission.py, test_multinode.py).

- :func:`tiny_assets`: a small synthetic video set and a tiny pre-trained backbone, built once per
  pytest session;
- :func:`training_config` / :func:`write_config`: a training config whose every path is absolute
  (data, weights, MLflow sqlite store, run storage), so any process on any (simulated) node reads
  the same files;
- :class:`LocalHead`: a ``ray start --head`` in its own process session with its own auth token,
  stopped by signalling that one process (never ``ray stop``, which kills every Ray process of the
  user on the machine, other clusters included);
- :func:`ray_processes_of_session` / :func:`raylet_pids`: what is left behind, for teardown checks.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.runtime import worker_pool_settings

CLASSES = ("blue_circle", "move_left_to_right", "move_right_to_left", "red_square")
VIDEOS_PER_CLASS = 8          # 24 training and 8 validation videos (val_fraction 0.25)
VAL_VIDEOS = 8


@dataclass(frozen=True)
class TinyAssets:
    videos: Path              # folder format: <videos>/<class>/<id>.mp4
    weights: Path             # tiny ViT backbone, open_clip layout


def tiny_assets(tmp_path_factory) -> TinyAssets:
    """4 classes x 8 videos of 32x32 pixels and 16 frames, and a briefly pre-trained tiny ViT.

    Built once per pytest session (under the session's base temp folder) and shared by the modules
    that ask for it.
    """
    from aim_core.tiny import pretrain_tiny_backbone
    from pipelines.data.synthetic import generate_synthetic

    root = tmp_path_factory.getbasetemp() / "cluster-assets"
    assets = TinyAssets(root / "synthetic" / "videos", root / "tiny_vit.pt")
    done = root / "READY"
    if not done.exists():
        generate_synthetic(root / "synthetic", videos_per_class=VIDEOS_PER_CLASS, size=32,
                           frames=16, classes=CLASSES)
        pretrain_tiny_backbone(assets.weights, steps=40)
        done.touch()
    return assets


def training_config(workdir: Path, assets: TinyAssets, *, name: str, epochs: int,
                    run: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete config (as a dict) training the tiny AIM model; results go under ``workdir``.

    ``workdir/mlflow.db`` is the MLflow store (its artifacts in ``workdir/mlartifacts``) and
    ``workdir/runs`` the Ray Train storage path; ``run`` overrides ``run.*`` fields.
    """
    workdir = Path(workdir).resolve()
    return {
        "model": {"variant": "aim", "num_classes": len(CLASSES), "num_frames": 8, "image_size": 32,
                  "drop_path": 0.0, "head_dropout": 0.0,
                  "backbone": {"source": "tiny", "name": "aim-tiny-vit",
                               "pretrained": str(assets.weights.resolve()),
                               "width": 64, "layers": 3, "heads": 4, "patch_size": 8}},
        "data": {"root": str(assets.videos.resolve()), "format": "folder", "val_fraction": 0.25,
                 "sampler": "uniform", "test_clips": 1, "test_crops": 1, "short_side": 32,
                 "crop_scale": [0.6, 1.0], "horizontal_flip": False, "videos_per_task": 8},
        "optim": {"epochs": epochs, "batch_size": 8, "per_device_batch": 4, "lr": 3e-3,
                  "warmup_epochs": 1},
        "run": {"name": name, "storage_path": str(workdir / "runs"), "num_workers": 1,
                "cpus_per_worker": 1.0, "ingest_cpus": 1.0, "max_failures": 2,
                "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}", **(run or {})},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """``config`` as YAML at ``path`` (what ``aim-video train path`` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pool_environment(num_cpus: int) -> dict[str, str]:
    """:func:`pipelines.runtime.worker_pool_settings` as the ``RAY_<setting>`` variables a
    ``ray start`` node reads."""
    return {f"RAY_{key}": str(value) for key, value in worker_pool_settings(num_cpus).items()}


# ----------------------------------------------------------------------------------------------
# A local head started like a user would, with `ray start`
# ----------------------------------------------------------------------------------------------

@dataclass
class LocalHead:
    """``ray start --head --block`` from this venv, token auth on, dashboard on loopback.

    The token lives in a private file of the head's temp folder (``RAY_AUTH_TOKEN_PATH``), not in
    ``~/.ray/auth_token``, so the test neither reads nor overwrites the user's token. ``--block``
    keeps ``ray start`` in the foreground as the parent of every process of the head (its own
    process session): SIGTERM to it stops the whole head, and anything still alive in the session
    afterwards is killed by pid. The temp folder (logs included) is removed after the stop.
    """

    num_cpus: int = 2
    # Short, under /tmp: Ray's unix sockets live below it (a pytest tmp_path is too long for them).
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ray-head-")))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    process: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_file(self) -> Path:
        return self.temp_dir / "auth_token"

    @property
    def log_file(self) -> Path:
        return self.temp_dir / "ray-start.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                "--include-dashboard=true", f"--ray-client-server-port={self.client_port}",
                "--disable-usage-stats", f"--temp-dir={self.temp_dir / 'ray'}"]

    def environment(self) -> dict[str, str]:
        """This venv first on PATH (jobs run ``aim-video`` from it), token auth, no outside Ray."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # SIGTERM stops now, no 30 s drain
        env.update(worker_pool_environment(self.num_cpus))   # as the private cluster's
        return env

    def start(self, timeout_s: float = 90) -> LocalHead:
        from ray.job_submission import JobSubmissionClient

        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(self.command(), env=self.environment(),
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n"
                                   f"{self.log_file.read_text()[-4000:]}")
            try:
                JobSubmissionClient(self.dashboard_url, headers=self.auth_headers()).list_jobs()
                return self
            except Exception:  # noqa: BLE001 - not listening yet, or the job agent not ready
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"the head's job API did not come up in {timeout_s:.0f} s:"
                                       f"\n{self.log_file.read_text()[-4000:]}")
                time.sleep(1)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers())

    def submit(self, timeout_s: float = 60, **job) -> str:
        """``submit_job(**job)``, again while the head answers that no job agent is available yet:
        its API comes up before the node's agent registers, and Ray's answer says to try later."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.client().submit_job(**job)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def stop(self, timeout_s: float = 30) -> None:
        if self.process is None:
            return
        session = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        for pid in ray_processes_of_session(session):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _processes() -> list[tuple[int, int, str]]:
    """``(pid, session id, command line)`` of every process we can see."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            out.append((pid, os.getsid(pid), cmdline))
        except (OSError, ProcessLookupError):
            continue
    return out


def ray_processes_of_session(session: int) -> list[int]:
    """Pids of the processes still alive in process session ``session``."""
    return [pid for pid, sid, _ in _processes() if sid == session and pid != os.getpid()]


def raylet_pids(temp_dir: Path | str | None = None) -> list[int]:
    """Pids of live raylets (those whose command line names ``temp_dir``, when given)."""
    return [pid for pid, _, cmd in _processes()
            if "/raylet/raylet " in cmd and (temp_dir is None or str(temp_dir) in cmd)]
