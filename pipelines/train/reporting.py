"""Each epoch, once: to MLflow from the Train controller, and as one line on the driver's console.

:class:`EpochReporter` is a Ray Train callback; its ``after_report`` fires in the Train controller
once the epoch's checkpoint is persisted, so an epoch that a failed worker group has to redo is
logged once, when it finally completes: one continuous history. It also hands the metrics to the
driver through a Ray queue, where :class:`EpochLines` prints the epoch line and moves the bar
(workers' own output reaches the console only with ``-v``).
"""

from __future__ import annotations

import queue as queue_errors
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import mlflow
import ray
import ray.train
from ray.util.queue import Queue

from pipelines import console
from pipelines.runtime import on_this_node
from pipelines.tracking import runs


def epoch_line(m: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  train top-1 "
            f"{100 * m['train_top1']:.1f}%  lr {m['lr']:.2e}  {m['clips_per_s']:.1f} clips/s  "
            f"peak {m['peak_memory_mb']:.0f} MB  {m.get('precision', '')}  "
            f"({m['epoch_seconds']:.1f} s)")
    if "val_top1" in m:
        line += (f"  | val top-1 {100 * m['val_top1']:.1f}%  top-5 {100 * m['val_top5']:.1f}%  "
                 f"mean-class {100 * m['val_mean_class_acc']:.1f}%")
    return line


class EpochReporter(ray.train.UserCallback):
    """Logs each epoch's metrics to the run's MLflow run and passes them to the driver."""

    def __init__(self, tracking_uri: str, run_id: str, lines: Queue | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.lines = lines

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        if not metrics or "epoch" not in metrics[0]:
            return
        mlflow.set_tracking_uri(self.tracking_uri)
        runs.log_epoch(metrics[0], int(metrics[0]["epoch"]), run_id=self.run_id)
        if self.lines is not None:
            self.lines.put_nowait(dict(metrics[0]))


class EpochLines:
    """On the driver, while ``fit`` runs: one line per reported epoch above one progress bar."""

    def __init__(self, name: str, epochs: int, every: int = 1, first_epoch: int = 1) -> None:
        self.queue = Queue(actor_options=on_this_node())   # beside its reader, the driver
        self.name, self.epochs, self.every = name, epochs, every
        self._first_epoch = first_epoch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print_lines, daemon=True)

    def __enter__(self) -> EpochLines:
        self._bar = console.progress(self.epochs, f"train {self.name}")
        self._progress = self._bar.__enter__()
        self._progress.advance(self._first_epoch - 1)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()
        self._bar.__exit__(*exc)
        self.queue.shutdown()

    def _print_lines(self) -> None:
        while not self._stop.is_set():
            try:
                self._show(self.queue.get(timeout=0.5))
            except queue_errors.Empty:
                continue
            except Exception:  # the queue's actor is gone: the run is ending
                return

    def _drain(self) -> None:
        try:
            while True:
                self._show(self.queue.get_nowait())
        except Exception:  # empty, or already shut down
            pass

    def _show(self, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch % self.every == 0 or epoch == self.epochs:
            console.say(f"[aim-video train] {epoch_line(metrics, self.epochs)}")
        self._progress.advance()


@contextmanager
def system_metrics(tracking_uri: str | None, run_id: str | None, interval_s: float,
                   resume: bool) -> Iterator[None]:
    """MLflow's system metrics (CPU, memory, disk, network; GPU utilisation and memory where NVML
    finds GPUs) of this node, into the run every ``interval_s``: a starved GPU shows in the run's
    charts. Rank 0 runs it; a resumed run continues the series."""
    if not run_id or interval_s <= 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resume,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
