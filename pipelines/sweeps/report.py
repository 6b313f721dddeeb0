"""A sweep's results in the paper's form: a Markdown table and the accuracy plots.

Every number comes from the trials themselves: top-1/top-5 and the cost from each trial's last Tune
result (what the trial reported after its final evaluation), and, for a trial stopped before that
(ASHA, interruption), its last epoch's validation metrics and the cost its MLflow run logged at the
start. Nothing is re-evaluated or re-counted here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from aim_core.storage import is_uri

from pipelines import console
from pipelines.sweeps.settings import SweepMeta
from pipelines.sweeps.studies import trial_config, trial_label
from pipelines.tracking.runs import log_file

REPORT_DIR = "report"
_COST_KEYS = ("tunable_params", "total_params", "gmacs_per_view")


@dataclass
class Row:
    """One trial as the report shows it. Accuracies are fractions in [0, 1]."""

    trial_id: str
    setting: str
    variant: str
    status: str                 # Tune's: TERMINATED, ERROR, RUNNING, PENDING
    finished: bool              # the trial reached its final evaluation
    epoch: int | None
    top1: float | None
    top5: float | None
    tunable_params: float | None
    total_params: float | None
    gmacs_per_view: float | None
    train_fraction: float
    ratio: float | None         # adapter bottleneck ratio (AIM variants only)
    mlflow_run_id: str | None
    results: dict[str, Any]     # the trial's last Tune result (scalars)

    def metric(self, name: str) -> float:
        value = self.results.get(name)
        return float(value) if isinstance(value, (int, float)) else math.nan


@dataclass
class SweepTable:
    meta: SweepMeta
    rows: list[Row]

    def best(self, metric: str, mode: str) -> Row | None:
        done = [r for r in self.rows if r.finished and not math.isnan(r.metric(metric))]
        if not done:
            return None
        pick = max if mode == "max" else min
        return pick(done, key=lambda r: r.metric(metric))


def collect(sweep_dir: str) -> SweepTable:
    """Rows of every trial of the sweep at ``sweep_dir``, in trial order."""
    from ray.tune import ExperimentAnalysis

    meta = SweepMeta.read(sweep_dir)
    analysis = ExperimentAnalysis(sweep_dir)
    children = _child_runs(meta)
    rows = [_row(meta, t, children.get(t.trial_id)) for t in analysis.trials]
    return SweepTable(meta, sorted(rows, key=lambda r: r.trial_id))


def _child_runs(meta: SweepMeta) -> dict[str, Any]:
    if not meta.parent_run_id:
        return {}
    client = MlflowClient(meta.tracking_uri)
    parent = client.get_run(meta.parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{meta.parent_run_id}'")
    return {r.data.tags["trial_id"]: r for r in runs if "trial_id" in r.data.tags}


def _row(meta: SweepMeta, trial: Any, run: Any | None) -> Row:
    last = {k: v for k, v in (trial.last_result or {}).items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    cfg = trial_config(meta.base, trial.config)
    finished = "final_top1" in last
    logged = run.data.metrics if run is not None else {}
    cost = {k: last.get(k, logged.get(f"cost/{k}")) for k in _COST_KEYS}
    return Row(
        trial_id=trial.trial_id, setting=trial_label(trial.config), variant=cfg.model.variant,
        status=str(trial.status), finished=finished,
        epoch=int(last["epoch"]) if "epoch" in last else None,
        top1=last.get("final_top1" if finished else "val_top1"),
        top5=last.get("final_top5" if finished else "val_top5"), **cost,
        train_fraction=cfg.data.train_fraction,
        ratio=cfg.model.adapter.ratio if cfg.model.variant == "aim" else None,
        mlflow_run_id=last.get("mlflow_run_id") or (run.info.run_id if run else None),
        results=last)


# ----------------------------------------------------------------------------------------------
# Table
# ----------------------------------------------------------------------------------------------

def markdown(table: SweepTable) -> str:
    """The paper's table form: setting, tunable parameters, GMACs per view, top-1, top-5."""
    meta = table.meta
    views = meta.base["data"]["test_clips"] * meta.base["data"]["test_crops"]
    lines = [f"# Sweep `{meta.name}` ({meta.config.study or 'search space'})", "",
             f"Top-1/top-5 on the validation split ({views} view(s) per video), from each trial's "
             f"final evaluation; *italic*: stopped early (last epoch's validation).", "",
             "| setting | variant | tunable params (M) | GMACs/view | top-1 (%) | top-5 (%) "
             "| epochs | trial | status |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in table.rows:
        acc = [_pct(r.top1), _pct(r.top5)]
        if not r.finished:
            acc = [f"*{a}*" if a != "-" else a for a in acc]
        lines.append(f"| {r.setting} | {r.variant} | {_num(r.tunable_params, 1e6)} | "
                     f"{_num(r.gmacs_per_view, 1)} | {acc[0]} | {acc[1]} | "
                     f"{r.epoch if r.epoch is not None else '-'} | {r.trial_id} | {r.status} |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, unit: float) -> str:
    """Three significant digits: 11.0M for ViT-B/16 and 0.0123M for the tiny test model alike."""
    return "-" if value is None else f"{value / unit:.3g}"


# ----------------------------------------------------------------------------------------------
# Plots (drawn only when the sweep varies the quantity)
# ----------------------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    return fig, fig.subplots()


def plot_vs_params(rows: list[Row], out: Path) -> Path | None:
    pts = [r for r in rows if r.top1 is not None and r.tunable_params]
    if len({r.tunable_params for r in pts}) < 2:
        return None
    fig, ax = _figure()
    ax.scatter([r.tunable_params / 1e6 for r in pts], [100 * r.top1 for r in pts])
    for r in pts:
        ax.annotate(r.setting, (r.tunable_params / 1e6, 100 * r.top1), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _labels(ax, "tunable parameters (M, log)", "top-1 vs tunable parameters")
    fig.savefig(out, dpi=110)
    return out


def plot_vs_fraction(rows: list[Row], out: Path) -> Path | None:
    pts = [r for r in rows if r.top1 is not None]
    if len({r.train_fraction for r in pts}) < 2:
        return None
    fig, ax = _figure()
    for variant in sorted({r.variant for r in pts}):
        line = sorted((r.train_fraction, 100 * r.top1) for r in pts if r.variant == variant)
        ax.plot(*zip(*line), marker="o", label="AIM" if variant == "aim" else variant)
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    _labels(ax, "fraction of training data (log)", "top-1 vs training data")
    fig.savefig(out, dpi=110)
    return out


def plot_vs_ratio(rows: list[Row], out: Path) -> Path | None:
    pts = sorted((r.ratio, 100 * r.top1) for r in rows if r.ratio is not None and r.top1 is not None)
    if len({p[0] for p in pts}) < 2:
        return None
    fig, ax = _figure()
    ax.plot(*zip(*pts), marker="o")
    ax.set_xscale("log", base=2)
    _labels(ax, "adapter bottleneck ratio (log2)", "top-1 vs bottleneck ratio")
    fig.savefig(out, dpi=110)
    return out


def _labels(ax: Any, xlabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------------------------

def default_out(sweep_dir: str) -> Path:
    if is_uri(sweep_dir):  # remote sweep: write here, the parent run keeps a copy
        return Path.cwd() / f"{sweep_dir.rstrip('/').rsplit('/', 1)[-1]}-{REPORT_DIR}"
    return Path(sweep_dir) / REPORT_DIR


def write_report(sweep_dir: str, out: str | Path | None = None, *, table: SweepTable | None = None,
                 log_to_mlflow: bool = True) -> Path:
    """``report.md``, ``results.json`` and the plots under ``out``; logged to the parent run."""
    table = table or collect(sweep_dir)
    out = Path(out) if out else default_out(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.md", out / "results.json"]
    files[0].write_text(markdown(table))
    files[1].write_text(json.dumps([asdict(r) for r in table.rows], indent=1))
    for plot, name in ((plot_vs_params, "accuracy_vs_params.png"),
                       (plot_vs_fraction, "accuracy_vs_fraction.png"),
                       (plot_vs_ratio, "accuracy_vs_ratio.png")):
        (out / name).unlink(missing_ok=True)  # a plot from an older, larger sweep must not linger
        if (path := plot(table.rows, out / name)) is not None:
            files.append(path)
    if log_to_mlflow and table.meta.parent_run_id:
        import mlflow

        mlflow.set_tracking_uri(table.meta.tracking_uri)
        for path in files:
            log_file(path, REPORT_DIR, run_id=table.meta.parent_run_id)
    console.say(f"[aim-video report] wrote {', '.join(p.name for p in files)} to {out}")
    console.say(markdown(table))
    return out

