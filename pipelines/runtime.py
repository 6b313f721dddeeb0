"""Where a run executes and where its files go: the Ray cluster, absolute paths, the run folder.

Every stage that needs Ray calls :func:`ensure_ray`, so joining ``RAY_ADDRESS`` versus starting a
private local cluster is decided in one place, and that private cluster listens on loopback only.
Ray is imported lazily: :func:`keep_private_cluster_on_loopback` must run before the first import.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aim_core.config import Config
from aim_core.storage import Location, is_uri, join

from pipelines import console
from pipelines.resources import dashboard_host

log = logging.getLogger(__name__)

#: Ray's switch for single-machine clusters (its default on Windows and macOS): the node's address is
#: then 127.0.0.1, so the GCS, raylet, object manager, workers, agents and metrics endpoints all
#: listen on loopback, and no other machine can join or connect.
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
MLFLOW_RUN_FILE = "mlflow_run_id"

_started_sessions: list[str] = []   # session folders of the clusters this process started
_dashboard: list[str] = []          # the dashboard URL of the cluster this process is connected to


def keep_private_cluster_on_loopback() -> None:
    """Make the cluster :func:`ensure_ray` starts listen on 127.0.0.1 only.

    Ray reads the switch when it is first imported, so the CLI calls this before importing anything
    that imports Ray. A user who sets the variable, or joins a cluster (``RAY_ADDRESS``), decides.
    """
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOOPBACK_ONLY_ENV, "0")


def worker_pool_settings(num_cpus: int | None = None) -> dict[str, int]:
    """Raylet settings for a private cluster of ``num_cpus`` (default: this machine's) that keep
    idle task processes alive between Ray Data executions.

    The raylet keeps at most ``num_workers_soft_limit`` idle task processes (by default the node's
    CPU count) and kills the others a second after they go idle. A run's tasks (Ray Data's reads
    beside the training and evaluation decode tasks, several at once where ``run.ingest_cpus`` is
    a fraction of a CPU) need more processes than that, so on a small node each epoch's or trial's
    tasks paid new processes importing torch, torchvision and PyAV, several seconds of CPU each.
    The headroom costs memory only while such processes exist (up to 32 beyond the CPU count, a
    few hundred MB each), never CPU.
    """
    cpus = num_cpus or os.cpu_count() or 1
    return {"num_workers_soft_limit": cpus + 32}


def ensure_ray(address: str | None = None) -> None:
    """Join ``RAY_ADDRESS`` (or ``address``; ``auto`` finds a head on this machine) when set, else
    start a private local cluster, its dashboard on loopback.

    Plain ``ray.init()`` would silently join whatever head ``ray start`` left running here; the
    embedded default must not depend on that. Jobs from ``ray job submit`` get ``RAY_ADDRESS``.
    """
    import ray
    import ray.data

    if ray.is_initialized():
        return
    console.capture_library_logs()
    # Workers' and Ray's own output reaches the console only with -v; our lines come from the
    # driver (pipelines.console), and one progress bar replaces Ray Data's per-dataset bars.
    quiet = {"log_to_driver": console.verbose()}
    ray.data.DataContext.get_current().enable_progress_bars = False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, **quiet)
    else:
        context = ray.init(address="local", dashboard_host=dashboard_host(),
                           include_dashboard=True, _system_config=worker_pool_settings(), **quiet)
        _started_sessions.append(context.address_info["session_dir"])
    console.capture_library_logs()
    _dashboard[:] = [context.dashboard_url] if context.dashboard_url else []
    if address:
        return
    node_ip = context.address_info["node_ip_address"]
    if node_ip not in ("127.0.0.1", "::1"):
        log.warning("the private Ray cluster listens on %s, not only on loopback: Ray was imported "
                    "before %s=0 was set (the aim-video command sets it first)", node_ip,
                    LOOPBACK_ONLY_ENV)


def on_this_node() -> dict[str, object]:
    """Ray options for a small actor the driver depends on (the epoch clock, the epoch-line queue):
    on the driver's node, so a lost worker node cannot take it down, and with no CPU, so it needs
    no room in a sweep trial's placement group."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)}


def dashboard_url() -> str | None:
    """``http://host:port`` of the Ray dashboard of the cluster :func:`ensure_ray` connected to."""
    if not _dashboard:
        return None
    url = _dashboard[0]
    return url if "://" in url else f"http://{url}"


def shutdown_ray(timeout_s: float = 10.0) -> None:
    """Disconnect, and when this process started the cluster, leave none of its processes behind.

    ``ray.shutdown`` stops the processes it started, but agents of the node may outlive it for a
    while; whatever of this session still runs after ``timeout_s`` is killed (this session's
    processes only: they name its session folder on their command line).
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    _dashboard.clear()
    while _started_sessions:
        session = _started_sessions.pop()
        deadline = time.monotonic() + timeout_s
        while (left := session_processes(session)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def private_sessions() -> list[str]:
    """Session folders of the private clusters this process started and has not shut down."""
    return list(_started_sessions)


def session_processes(session_dir: str) -> list[int]:
    """Pids of the live processes of a Ray session (Linux ``/proc``).

    A process belongs to the session when its command line names the session folder (GCS, raylet,
    dashboard) or it holds a file open under it (agents and workers rename themselves
    ``ray::...``, but log into the session's folder).
    """
    root = os.path.realpath(session_dir)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[-1][:1] == "Z":
                continue
            if root.encode() in Path(f"/proc/{entry}/cmdline").read_bytes() or any(
                    os.readlink(fd.path).startswith(root + os.sep) for fd in os.scandir(f"/proc/{entry}/fd")):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------

def absolute(value: str | None) -> str | None:
    """A local path made absolute (Ray workers run in other folders); URIs and None as they are."""
    if not value or is_uri(value) or os.path.isabs(value):
        return value
    return str(Path(value).expanduser().resolve())


def absolute_paths(cfg: Config) -> Config:
    """``cfg`` with every local path absolute, resolved on the driver before it travels."""
    data = replace(cfg.data, root=absolute(cfg.data.root),
                   train_annotations=absolute(cfg.data.train_annotations),
                   val_annotations=absolute(cfg.data.val_annotations),
                   labels_file=absolute(cfg.data.labels_file),
                   shards_dir=absolute(cfg.data.shards_dir))
    backbone = cfg.model.backbone
    pretrained = backbone.pretrained
    if pretrained and (os.sep in pretrained or Path(pretrained).expanduser().exists()):
        pretrained = absolute(pretrained)
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"model.backbone.pretrained: weights file not found: {pretrained}")
    model = replace(cfg.model, backbone=replace(backbone, pretrained=pretrained))
    return replace(cfg, data=data, model=model,
                   run=replace(cfg.run, storage_path=absolute(cfg.run.storage_path)),
                   prepare=replace(cfg.prepare, output=absolute(cfg.prepare.output)))


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunFolder:
    """``<storage>/<name>``: Ray Train's checkpoints, and the marker naming the run's MLflow run.

    The marker is written first, so a run exists (and ``--resume`` continues the same MLflow run)
    as soon as it has one; an ingest output folder alone does not make a run.
    """

    storage: str
    name: str

    @classmethod
    def of(cls, cfg: Config) -> RunFolder:
        return cls(absolute(cfg.run.storage_path), cfg.run.name)

    @property
    def path(self) -> str:
        return join(self.storage, self.name)

    def mlflow_run_id(self) -> str | None:
        text = Location.of(join(self.path, MLFLOW_RUN_FILE)).read_text()
        return (text or "").strip() or None

    def exists(self) -> bool:
        return self.mlflow_run_id() is not None

    def remember_mlflow_run(self, run_id: str) -> None:
        Location.of(join(self.path, MLFLOW_RUN_FILE)).write_text(run_id)
