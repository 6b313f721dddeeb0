"""Ray Tune sweeps: the paper's ablations (and any search space) as trials of the training pipeline.

Why a function trainable: with Ray Train V2, ``Tuner(TorchTrainer(...))`` is gone. Each trial is a
small Tune function (0.1 CPU) that runs :func:`pipelines.train.driver.run_training` for the base config plus
the trial's dotted-key overrides; the Train run gets its own workers and forwards every epoch's
metrics to Tune through ``TuneReportCallback``, then the trial reports its final evaluation and cost.

Layout under ``<run.storage_path>/<sweep name>/`` (the Tune experiment folder)::

    aim_sweep.json          what the sweep is (study, space, base config, metric, MLflow parent run)
    trial_<id>/             Tune's result.json, progress.csv, params.json, TensorBoard events
    train/<trial id>/       the trial's Ray Train run (checkpoints); named after the trial id, so a
                            restored sweep resumes an unfinished trial from its last epoch
    report/                 report.md, results.json and the plots (see :mod:`pipelines.sweeps.report`)

The studies and the search-space format are in :mod:`pipelines.sweeps.studies`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import mlflow
from mlflow import MlflowClient

from aim_core.config import Config, ConfigError
from aim_core.storage import Location, join

from pipelines.resources import trial_concurrency
from pipelines.runtime import absolute, absolute_paths, ensure_ray
from pipelines.sweeps.studies import STUDIES, SearchSpace, apply_overrides, trial_label, trial_overrides

META_FILE = "aim_sweep.json"
TRAIN_DIR = "train"
#: What a trial reports after every epoch (the ``val_`` ones on evaluated epochs) and, at its end,
#: on top of the last epoch's: the final evaluation and the model's cost.
EPOCH_METRICS = ("train_loss", "train_top1", "clips_per_s", "epoch_seconds", "val_top1",
                 "val_top5", "val_mean_class_acc")
FINAL_METRICS = ("final_top1", "final_top5", "final_mean_class_acc", "tunable_params",
                 "gflops_per_view")


# ----------------------------------------------------------------------------------------------
# What a sweep is (stored next to Tune's state, so --resume and the report need nothing else)
# ----------------------------------------------------------------------------------------------

@dataclass
class SweepMeta:
    name: str
    path: str                                  # the Tune experiment folder
    study: str | None
    settings: list[dict[str, Any]]             # [{"label", "overrides"}]
    space: dict[str, Any]                      # SearchSpace as a dict
    base: dict[str, Any]                       # the base Config.to_dict()
    metric: str = "val_top1"
    mode: str = "max"
    asha: bool = False
    max_concurrent: int | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    register_best: str | None = None

    def save(self) -> None:
        (Location.of(self.path) / META_FILE).write_json(asdict(self))

    @classmethod
    def read(cls, sweep_dir: str) -> SweepMeta:
        data = (Location.of(sweep_dir) / META_FILE).read_json()
        if data is None:
            raise FileNotFoundError(f"{sweep_dir} is not an aim-video sweep (no {META_FILE})")
        return cls(**data)

    @property
    def train_storage(self) -> str:
        return join(self.path, TRAIN_DIR)


# ----------------------------------------------------------------------------------------------
# The trial
# ----------------------------------------------------------------------------------------------

def run_trial(config: dict[str, Any], *, meta: SweepMeta) -> None:
    """One Tune trial: a Train run named after the trial id, nested in the sweep's MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train.driver import run_training

    trial_id = tune.get_context().get_trial_id()
    cfg = apply_overrides(meta.base, trial_overrides(config))
    cfg = replace(cfg, run=replace(cfg.run, name=trial_id, storage_path=meta.train_storage))
    tags = {"sweep": meta.name, "study": meta.study or "space", "trial_id": trial_id,
            "setting": trial_label(config)}
    outcome = run_training(cfg, resume=True, parent_run_id=meta.parent_run_id, tags=tags,
                           callbacks=[TuneReportCallback()])
    ev, cost = outcome.evaluation, outcome.cost
    tune.report({**outcome.history[-1], "val_top1": ev["top1"],
                 "val_top5": ev["top5"], "val_mean_class_acc": ev["mean_class_acc"],
                 "final_top1": ev["top1"], "final_top5": ev["top5"],
                 "final_mean_class_acc": ev["mean_class_acc"],
                 "tunable_params": cost["tunable_params"], "total_params": cost["total_params"],
                 "gflops_per_view": cost["gflops_per_view"], "mlflow_run_id": outcome.mlflow_run_id})


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------

@dataclass
class SweepOutcome:
    path: str
    parent_run_id: str
    complete: bool
    best_trial: str | None
    report_dir: str | None
    registered_version: str | None = None


def sweep_path(cfg: Config, name: str) -> str:
    return join(absolute(cfg.run.storage_path), name)


def plan_sweep(cfg: Config, study: str | None, space: SearchSpace | None = None, *,
               name: str | None = None, fractions: tuple[float, ...] | None = None,
               metric: str = "val_top1", mode: str = "max", asha: bool = False,
               max_concurrent: int | None = None, register_best: str | None = None) -> SweepMeta:
    """Resolve the study's settings and check every trial config before anything starts."""
    from pipelines.tracking import runs

    if study is None and space is None:
        raise ConfigError(f"sweep: give --study ({', '.join(STUDIES)}) and/or --space FILE")
    if study is not None and study not in STUDIES:
        raise ConfigError(f"sweep --study: expected one of {list(STUDIES)}, got {study!r}")
    if mode not in ("max", "min"):
        raise ConfigError(f"sweep --mode: expected max or min, got {mode!r}")
    allowed = EPOCH_METRICS if asha else EPOCH_METRICS + FINAL_METRICS
    if metric not in allowed:
        why = " (--asha compares trials after every epoch)" if asha else ""
        raise ConfigError(f"sweep --metric: expected one of {list(allowed)}{why}, got {metric!r}")
    if asha and cfg.optim.eval_every != 1 and metric.startswith("val_"):
        raise ConfigError(f"sweep --asha compares trials on every epoch's {metric}: set "
                          f"optim.eval_every=1")
    cfg = runs.pin_tracking_uri(absolute_paths(cfg))
    settings = STUDIES[study](cfg, fractions=fractions) if study else []
    base = cfg.to_dict()
    for s in settings:
        apply_overrides(base, s.overrides)
    space = space or SearchSpace()
    apply_overrides(base, {k: _example(v) for k, v in space.params.items()})
    name = name or f"{cfg.run.name}-{study or 'space'}"
    return SweepMeta(name=name, path=sweep_path(cfg, name), study=study,
                     settings=[asdict(s) for s in settings], space=asdict(space), base=base,
                     metric=metric, mode=mode, asha=asha, max_concurrent=max_concurrent,
                     tracking_uri=cfg.run.tracking_uri, register_best=register_best)


def _example(spec: Any) -> Any:
    """A value of the space entry, to validate its key and type against the config."""
    if not isinstance(spec, dict):
        return spec
    ((kind, args),) = spec.items()
    return args[0] if kind in ("grid", "choice") else float(args[0])


def param_space(meta: SweepMeta) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    if meta.settings:
        out["setting"] = tune.grid_search(meta.settings)
    if meta.space["params"]:
        out["space"] = SearchSpace(**meta.space).domains()
    return out


def run_sweep(meta: SweepMeta, *, resume: bool = False) -> SweepOutcome:
    """Run (or, with ``resume``, restore and finish) the sweep; report; register the best trial."""
    import ray
    from ray import tune

    from pipelines.tracking import runs

    if resume:
        meta = _merge_for_resume(meta)
    elif tune.Tuner.can_restore(meta.path) or (Location.of(meta.path) / META_FILE).is_file():
        raise FileExistsError(f"sweep {meta.name!r} already exists at {meta.path}: pass --resume "
                              f"to finish it, or choose another name")
    ensure_ray()
    base = Config.from_dict(meta.base)
    with runs.start_run(base, run_name=meta.name, run_id=meta.parent_run_id,
                            tags={"sweep": meta.name, "study": meta.study or "space",
                                  "role": "sweep"}) as parent:
        meta.parent_run_id = parent.info.run_id
        meta.save()
        mlflow.log_params({"sweep.study": meta.study or "space", "sweep.metric": meta.metric,
                                    "sweep.mode": meta.mode, "sweep.asha": meta.asha,
                                    "sweep.trials": len(meta.settings) or "space"}
                                   if not resume else {})
        _print_where_to_watch(meta, ray)
        trainable = tune.with_resources(tune.with_parameters(run_trial, meta=meta), {"CPU": 0.1})
        if resume and tune.Tuner.can_restore(meta.path):
            tuner = tune.Tuner.restore(meta.path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            tuner = _new_tuner(meta, trainable, base)
        tuner.fit()
        return _finish(meta)


def _new_tuner(meta: SweepMeta, trainable: Any, base: Config) -> Any:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = None
    if meta.asha:
        # stop_last_trials=False: a trial that reaches the last epoch finishes its own evaluation,
        # logging and final report instead of being stopped at its last result.
        options = {"grace_period": max(1, base.optim.epochs // 5), "reduction_factor": 2,
                   **meta.space.get("asha", {})}
        scheduler = ASHAScheduler(time_attr="epoch", metric=meta.metric, mode=meta.mode,
                                  max_t=base.optim.epochs, stop_last_trials=False, **options)
    concurrent = meta.max_concurrent or trial_concurrency(base.run, ray.cluster_resources())
    print(f"[aim-video sweep] up to {concurrent} trial(s) at once", flush=True)
    return tune.Tuner(
        trainable, param_space=param_space(meta),
        tune_config=tune.TuneConfig(num_samples=meta.space["num_samples"], scheduler=scheduler,
                                    max_concurrent_trials=concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=meta.name, storage_path=meta.path.rsplit("/", 1)[0]))


def _merge_for_resume(meta: SweepMeta) -> SweepMeta:
    """The stored sweep, so restored trials keep the configs they started with."""
    stored = SweepMeta.read(meta.path)
    if meta.register_best:
        stored.register_best = meta.register_best
    return stored


def _print_where_to_watch(meta: SweepMeta, ray: Any) -> None:
    try:
        from ray._private.worker import get_dashboard_url

        dashboard = get_dashboard_url()
    except Exception:  # private helper: the URL is a convenience, never a failure
        dashboard = ""
    logdir = meta.path
    print(f"[aim-video sweep] {meta.name}: {meta.path}\n"
          f"[aim-video sweep] TensorBoard: tensorboard --logdir {logdir}\n"
          f"[aim-video sweep] Ray dashboard: "
          f"{('http://' + dashboard) if dashboard and '://' not in dashboard else dashboard or 'n/a'}"
          f"\n[aim-video sweep] MLflow parent run {meta.parent_run_id} ({meta.tracking_uri})",
          flush=True)


def _finish(meta: SweepMeta) -> SweepOutcome:
    """After ``fit``: close runs of stopped trials, write the report, register the best model."""
    from pipelines.sweeps.report import collect, write_report

    table = collect(meta.path)
    complete = all(r.status in ("TERMINATED", "ERROR") for r in table.rows)
    client = MlflowClient(meta.tracking_uri)
    for row in table.rows:
        if not row.mlflow_run_id:
            continue
        # A trial stopped by ASHA or an interruption leaves its run RUNNING, or FAILED when the
        # stop reached the training loop as an exception; it was stopped, not broken: KILLED.
        status = client.get_run(row.mlflow_run_id).info.status
        stopped_early = row.status == "TERMINATED" and not row.finished
        if status == "RUNNING" or (status == "FAILED" and stopped_early):
            client.set_terminated(row.mlflow_run_id, status="KILLED")
    report = write_report(meta.path, table=table)
    best = table.best(meta.metric, meta.mode)
    outcome = SweepOutcome(meta.path, meta.parent_run_id or "", complete,
                           best.trial_id if best else None, str(report))
    if best is not None:
        mlflow.set_tags({"best_trial": best.trial_id, "best_setting": best.setting})
        mlflow.log_metric(f"best_{meta.metric}", best.metric(meta.metric))
        print(f"[aim-video sweep] best trial {best.trial_id} ({best.setting}): {meta.metric} "
              f"{best.metric(meta.metric):.4f}", flush=True)
    if not complete:
        mlflow.set_tag("interrupted", "true")
        print(f"[aim-video sweep] not finished: resume with `aim-video sweep ... --resume` "
              f"(sweep {meta.path})", flush=True)
    elif meta.register_best and best is not None:
        outcome.registered_version = register_best(meta, best.mlflow_run_id)
    return outcome


def register_best(meta: SweepMeta, run_id: str | None) -> str:
    """Register the best trial's logged checkpoint as ``models:/<name>@champion``."""
    import tempfile

    from pipelines.tracking import registry

    if run_id is None:
        raise RuntimeError("the best trial has no MLflow run to register from")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoint/model.pt", dst_path=tmp,
            tracking_uri=meta.tracking_uri)
        version = registry.register_model(ckpt, meta.register_best, "champion", run_id=run_id,
                                          cfg=Config.from_dict(meta.base))
    mlflow.set_tag("registered_model", f"{meta.register_best}/{version.version}")
    print(f"[aim-video sweep] registered models:/{meta.register_best}@champion "
          f"(version {version.version}, run {run_id})", flush=True)
    return version.version


def parse_fractions(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in re.split(r"[,\s]+", text.strip()) if v)
    except ValueError as exc:
        raise ConfigError(f"sweep --fractions: expected numbers like 0.1,0.5,1, got {text!r}") from exc
    if not values or not all(0 < v <= 1 for v in values):
        raise ConfigError(f"sweep --fractions: expected numbers in (0, 1], got {text!r}")
    return values
