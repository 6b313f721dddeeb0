"""Ray Tune sweeps: the paper's ablations (and any search space) as trials of the training pipeline.

Why a function trainable: with Ray Train V2, ``Tuner(TorchTrainer(...))`` is gone. Each trial is a
small Tune function (0.1 CPU) that runs :func:`pipelines.train.driver.run_training` for the base
config plus the trial's dotted-key overrides; the Train run gets its own workers and forwards every epoch's
metrics to Tune through ``TuneReportCallback``, then the trial reports its final evaluation and cost.

Layout under ``<run.storage_path>/<sweep name>/`` (the Tune experiment folder)::

    aim_sweep.json          what the sweep is (study, space, base config, metric, MLflow parent run)
    <setting>_<id>/         Tune's result.json, progress.csv, params.json, TensorBoard events
    train/<setting>_<id>/   the trial's Ray Train run (checkpoints); named after the trial, so a
                            restored sweep resumes an unfinished trial from its last epoch
    report/                 report.md, results.json and the plots (see :mod:`pipelines.sweeps.report`)

The studies and the search-space format are in :mod:`pipelines.sweeps.studies`, the sweep's typed
settings in :mod:`pipelines.sweeps.settings`. Trials are named by their setting (``ratio=0.0625``)
in Tune's folders, TensorBoard's run list and MLflow's child runs, followed by Tune's trial id.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, replace
from typing import Any

import mlflow
from mlflow import MlflowClient
from ray.tune import Callback

from aim_core.config import Config, ConfigError, check_override
from aim_core.storage import Location, join

from pipelines import console
from pipelines.preflight import check_data_location
from pipelines.resources import trial_concurrency
from pipelines.runtime import absolute_paths, dashboard_url, ensure_ray
from pipelines.sweeps.report import collect, write_report
from pipelines.sweeps.settings import META_FILE, SweepConfig, SweepMeta
from pipelines.sweeps.studies import STUDIES, trial_config, trial_label, trial_slug, tune_domain
from pipelines.tracking import registry, runs


# ----------------------------------------------------------------------------------------------
# The trial
# ----------------------------------------------------------------------------------------------

def trial_name(trial: Any) -> str:
    """``<setting>_<trial id>``: readable in every list, unique, the same after a restore."""
    return f"{trial_slug(trial.config)}_{trial.trial_id}"


def run_trial(config: dict[str, Any], *, meta: SweepMeta) -> None:
    """One Tune trial: a Train run named after the trial, nested in the sweep's MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipelines.train.driver import run_training

    context = tune.get_context()
    cfg = trial_config(meta.base, config)
    name = f"{trial_slug(config)}_{context.get_trial_id()}"
    cfg = replace(cfg, run=replace(cfg.run, name=name, storage_path=meta.train_storage,
                                   register_as=None))   # the sweep registers the best one
    tags = {"sweep": meta.name, "study": meta.config.study or "space",
            "trial_id": context.get_trial_id(), "setting": trial_label(config)}
    outcome = run_training(cfg, resume=True, parent_run_id=meta.parent_run_id, tags=tags,
                           callbacks=[TuneReportCallback()])
    ev, cost = outcome.evaluation, outcome.cost
    tune.report({**outcome.history[-1], "val_top1": ev["top1"],
                 "val_top5": ev["top5"], "val_mean_class_acc": ev["mean_class_acc"],
                 "final_top1": ev["top1"], "final_top5": ev["top5"],
                 "final_mean_class_acc": ev["mean_class_acc"],
                 "tunable_params": cost["tunable_params"], "total_params": cost["total_params"],
                 "gmacs_per_view": cost["gmacs_per_view"], "mlflow_run_id": outcome.mlflow_run_id})


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


def plan_sweep(cfg: Config, sweep: SweepConfig) -> SweepMeta:
    """The sweep of ``sweep`` over ``cfg``: the study's settings resolved, checked up front.

    Each setting's overrides are checked field by field against the config schema (the studies
    write them from the config itself); the search space was checked when ``sweep`` was built.
    """
    if sweep.asha and cfg.optim.eval_every != 1 and sweep.metric.startswith("val_"):
        raise ConfigError(f"sweep.asha compares trials on every epoch's {sweep.metric}: set "
                          f"optim.eval_every=1")
    check_data_location(cfg)
    cfg = runs.pin_tracking_uri(absolute_paths(cfg))
    fractions = tuple(sweep.fractions) if sweep.fractions else None
    settings = STUDIES[sweep.study](cfg, fractions=fractions) if sweep.study else []
    for setting in settings:
        for key, value in setting.overrides.items():
            check_override(key, value)
    name = sweep.name or f"{cfg.run.name}-{sweep.study or 'space'}"
    return SweepMeta(config=sweep, name=name, path=join(cfg.run.storage_path, name),
                     base=cfg.to_dict(), settings=[asdict(s) for s in settings],
                     tracking_uri=cfg.run.tracking_uri)


def param_space(meta: SweepMeta) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    if meta.settings:
        out["setting"] = tune.grid_search(meta.settings)
    if meta.config.space.params:
        out["space"] = {key: tune_domain(spec) for key, spec in meta.config.space.params.items()}
    return out


def run_sweep(meta: SweepMeta, *, resume: bool = False) -> SweepOutcome:
    """Run (or, with ``resume``, restore and finish) the sweep; report; register the best trial.

    Resuming unpickles Tune's saved state from the sweep folder: whoever can write there can run
    code here (see SECURITY.md), so keep sweep storage as private as the code.
    """
    from ray import tune

    if resume:
        meta = _stored_for_resume(meta)
    elif tune.Tuner.can_restore(meta.path) or (Location.of(meta.path) / META_FILE).is_file():
        raise FileExistsError(f"sweep {meta.name!r} already exists at {meta.path}: pass --resume "
                              f"to finish it, or choose another name")
    ensure_ray()
    base = Config.from_dict(meta.base)
    with runs.start_run(base, run_name=meta.name, run_id=meta.parent_run_id,
                        tags={"sweep": meta.name, "study": meta.config.study or "space",
                              "role": "sweep"}) as parent:
        meta.parent_run_id = parent.info.run_id
        meta.save()
        if not resume:
            mlflow.log_params({"sweep.study": meta.config.study or "space",
                               "sweep.metric": meta.config.metric, "sweep.mode": meta.config.mode,
                               "sweep.asha": meta.config.asha,
                               "sweep.trials": len(meta.settings) or "space"})
        _print_where_to_watch(meta)
        trainable = tune.with_resources(tune.with_parameters(run_trial, meta=meta), {"CPU": 0.1})
        with console.progress(trial_count(meta), f"sweep {meta.name}"):
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

    sweep, scheduler = meta.config, None
    if sweep.asha:
        # stop_last_trials=False: a trial that reaches the last epoch finishes its own evaluation,
        # logging and final report instead of being stopped at its last result.
        rungs = sweep.space.asha
        scheduler = ASHAScheduler(
            time_attr="epoch", metric=sweep.metric, mode=sweep.mode, max_t=base.optim.epochs,
            grace_period=rungs.grace_period or max(1, base.optim.epochs // 5),
            reduction_factor=rungs.reduction_factor, stop_last_trials=False)
    concurrent = sweep.max_concurrent or trial_concurrency(base.run, ray.cluster_resources())
    console.say(f"[aim-video sweep] up to {concurrent} trial(s) at once")
    return tune.Tuner(
        trainable, param_space=param_space(meta),
        tune_config=tune.TuneConfig(num_samples=sweep.space.num_samples, scheduler=scheduler,
                                    max_concurrent_trials=concurrent,
                                    trial_dirname_creator=trial_name, trial_name_creator=trial_name),
        run_config=tune.RunConfig(name=meta.name, storage_path=meta.path.rsplit("/", 1)[0],
                                  verbose=1 if console.verbose() else 0, callbacks=[TrialLines()]))


def trial_count(meta: SweepMeta) -> int:
    """How many trials the sweep runs: settings x grid points x samples."""
    grids = [len(spec["grid"]) for spec in meta.config.space.params.values()
             if isinstance(spec, dict) and "grid" in spec]
    return max(1, len(meta.settings)) * math.prod(grids) * meta.config.space.num_samples


class TrialLines(Callback):
    """A Tune callback on the driver: one line per finished trial, advancing the sweep's bar.

    It is pickled with the Tuner's state (and restored with it), so it holds nothing but looks
    the bar up when a trial ends.
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        top1 = result.get("final_top1", result.get("val_top1"))
        score = f"val top-1 {100 * top1:.1f}%" if isinstance(top1, float) else "no score"
        console.say(f"[aim-video sweep] trial {trial_name(trial)} done: {score} after "
                    f"{int(result.get('epoch', 0))} epoch(s)")
        console.advance()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        console.say(f"[aim-video sweep] trial {trial_name(trial)} failed: see {trial.path}")
        console.advance()


def _stored_for_resume(meta: SweepMeta) -> SweepMeta:
    """The stored sweep, so restored trials keep the configs they started with; a best-model name
    given now (``--register-best``) still counts."""
    stored = SweepMeta.read(meta.path)
    register_as = meta.base["run"].get("register_as")
    if register_as:
        stored.base["run"]["register_as"] = register_as
    return stored


def _print_where_to_watch(meta: SweepMeta) -> None:
    console.say(f"[aim-video sweep] {meta.name}: {meta.path}\n"
                f"[aim-video sweep] TensorBoard: tensorboard --logdir {meta.path}\n"
                f"[aim-video sweep] Ray dashboard (while it runs): {dashboard_url() or 'n/a'}\n"
                f"[aim-video sweep] MLflow parent run {meta.parent_run_id} ({meta.tracking_uri})")


def _finish(meta: SweepMeta) -> SweepOutcome:
    """After ``fit``: close runs of stopped trials, write the report, register the best model."""
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
    metric = meta.config.metric
    best = table.best(metric, meta.config.mode)
    outcome = SweepOutcome(meta.path, meta.parent_run_id or "", complete,
                           best.trial_id if best else None, str(report))
    if best is not None:
        mlflow.set_tags({"best_trial": best.trial_id, "best_setting": best.setting})
        mlflow.log_metric(f"best_{metric}", best.metric(metric))
        console.say(f"[aim-video sweep] best trial {best.trial_id} ({best.setting}): {metric} "
              f"{best.metric(metric):.4f}")
    if not complete:
        mlflow.set_tag("interrupted", "true")
        console.say(f"[aim-video sweep] not finished: resume with `aim-video sweep ... --resume` "
              f"(sweep {meta.path})")
    elif meta.base["run"].get("register_as") and best is not None:
        outcome.registered_version = register_best(meta, best.mlflow_run_id)
    return outcome


def register_best(meta: SweepMeta, run_id: str | None) -> str:
    """Register the best trial's logged checkpoint as ``run.register_as`` of the sweep's base
    config, pointing ``run.register_alias`` at it."""
    base = Config.from_dict(meta.base)
    name, alias = base.run.register_as, base.run.register_alias
    if run_id is None:
        raise RuntimeError("the best trial has no MLflow run to register from")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoint/model.pt", dst_path=tmp,
            tracking_uri=meta.tracking_uri)
        version = registry.register_model(ckpt, name, alias, run_id=run_id, cfg=base)
    mlflow.set_tag("registered_model", f"{name}/{version.version}")
    console.say(f"[aim-video sweep] registered models:/{name}@{alias} "
          f"(version {version.version}, run {run_id})")
    return version.version
