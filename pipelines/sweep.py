"""Ray Tune sweeps: the paper's ablations (and any search space) as trials of the training pipeline.

Why a function trainable: with Ray Train V2, ``Tuner(TorchTrainer(...))`` is gone. Each trial is a
small Tune function (0.1 CPU) that runs :func:`pipelines.train.run_training` for the base config plus
the trial's dotted-key overrides; the Train run gets its own workers and forwards every epoch's
metrics to Tune through ``TuneReportCallback``, then the trial reports its final evaluation and cost.

Layout under ``<run.storage_path>/<sweep name>/`` (the Tune experiment folder)::

    aim_sweep.json          what the sweep is (study, space, base config, metric, MLflow parent run)
    trial_<id>/             Tune's result.json, progress.csv, params.json, TensorBoard events
    train/<trial id>/       the trial's Ray Train run (checkpoints); named after the trial id, so a
                            restored sweep resumes an unfinished trial from its last epoch
    report/                 report.md, results.json and the plots (see :mod:`pipelines.report`)

Search spaces live in their own YAML (``--space FILE``), not in the config file: the config stays a
strict, valid :class:`Config` that ``train``/``eval`` accept as is, and one space can be reused over
several base configs. Format::

    num_samples: 4                       # draws of the random dimensions (grids multiply it)
    params:                              # dotted config keys
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      optim.weight_decay: {uniform: [0.0, 0.1]}
      model.adapter.ratio: {grid: [0.125, 0.25]}
      model.adapter.placement: {choice: [all, "top:6"]}
      optim.epochs: 10                   # a plain value is fixed
    asha: {grace_period: 2, reduction_factor: 2}   # optional; used with --asha

A study (``--study``) and a space combine: every study setting is crossed with the space.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from aim_core.config import Config, ConfigError

META_FILE = "aim_sweep.json"
TRAIN_DIR = "train"
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
RATIOS = (0.0625, 0.125, 0.25, 0.5)
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")
#: What a trial reports after every epoch (the ``val_`` ones on evaluated epochs) and, at its end,
#: on top of the last epoch's: the final evaluation and the model's cost.
EPOCH_METRICS = ("train_loss", "train_top1", "clips_per_s", "epoch_seconds", "val_top1",
                 "val_top5", "val_mean_class_acc")
FINAL_METRICS = ("final_top1", "final_top5", "final_mean_class_acc", "tunable_params",
                 "gflops_per_view")


# ----------------------------------------------------------------------------------------------
# Studies: the paper's ablations as lists of settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One row of a study: a label as the paper names it and the config overrides that make it."""

    label: str
    overrides: dict[str, Any]


def components(cfg: Config, **_: Any) -> list[Setting]:
    """Table 1: from frozen space-only to full AIM, with the fully fine-tuned baselines."""
    aim = lambda *a: {"model.variant": "aim", "model.adapter.adaptations": list(a)}
    return [Setting("frozen_space_only", {"model.variant": "frozen_space_only"}),
            Setting("finetuned_space_only", {"model.variant": "finetuned_space_only"}),
            Setting("timesformer", {"model.variant": "timesformer"}),
            Setting("aim[spatial]", aim("spatial")),
            Setting("aim[spatial,temporal]", aim("spatial", "temporal")),
            Setting("aim[spatial,temporal,joint]", aim("spatial", "temporal", "joint"))]


def placement(cfg: Config, **_: Any) -> list[Setting]:
    """Table 7: adapters in the bottom or top half of the blocks, every other block, or all."""
    from aim_core.backbones import resolve_spec

    k = max(1, resolve_spec(cfg.model.backbone).layers // 2)
    return [Setting(p, {"model.variant": "aim", "model.adapter.placement": p})
            for p in (f"bottom:{k}", f"top:{k}", "every:2", "all")]


def ratio(cfg: Config, **_: Any) -> list[Setting]:
    """Table 8: the adapters' bottleneck ratio."""
    return [Setting(f"ratio={r:g}", {"model.variant": "aim", "model.adapter.ratio": r})
            for r in RATIOS]


def data_fraction(cfg: Config, fractions: tuple[float, ...] | None = None,
                  **_: Any) -> list[Setting]:
    """Fig. 3: AIM vs the fully fine-tuned TimeSformer on nested, stratified training subsets."""
    return [Setting(f"{variant}@{f:g}", {"model.variant": variant, "data.train_fraction": f})
            for f in fractions or DEFAULT_FRACTIONS for variant in ("aim", "timesformer")]


STUDIES: dict[str, Callable[..., list[Setting]]] = {
    "components": components, "placement": placement, "ratio": ratio,
    "data-fraction": data_fraction}


# ----------------------------------------------------------------------------------------------
# Search spaces
# ----------------------------------------------------------------------------------------------

@dataclass
class SearchSpace:
    """Dotted key -> ``{kind: args}`` or a fixed value (see the module docstring)."""

    params: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    asha: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        data = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(data) - {"params", "num_samples", "asha"}
        if not isinstance(data, dict) or unknown:
            raise ConfigError(f"{path}: expected keys params, num_samples, asha; got {sorted(unknown)}")
        space = cls(data.get("params") or {}, int(data.get("num_samples", 1)), data.get("asha") or {})
        for key, spec in space.params.items():
            tune_domain(key, spec)  # fail now, with the key's name, not inside a trial
        return space

    def domains(self) -> dict[str, Any]:
        return {key: tune_domain(key, spec) for key, spec in self.params.items()}


def tune_domain(key: str, spec: Any) -> Any:
    """A Tune domain for one ``params`` entry."""
    from ray import tune

    if not isinstance(spec, dict):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise ConfigError(f"space.params.{key}: expected one of {list(SPACE_KINDS)} "
                          f"(e.g. {{loguniform: [1e-4, 1e-2]}}) or a plain value, got {spec!r}")
    ((kind, args),) = spec.items()
    if not isinstance(args, list) or not args:
        raise ConfigError(f"space.params.{key}.{kind}: expected a non-empty list, got {args!r}")
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
        raise ConfigError(f"space.params.{key}.{kind}: expected [low, high] with low < high, "
                          f"got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"space.params.{key}.loguniform: bounds must be positive, got {args!r}")
    return (tune.uniform if kind == "uniform" else tune.loguniform)(*map(float, args))


# ----------------------------------------------------------------------------------------------
# Trial configs (shared with the report, so it describes trials exactly as they ran)
# ----------------------------------------------------------------------------------------------

def trial_overrides(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a Tune trial config: its study setting, then its space sample."""
    out = dict((trial_config.get("setting") or {}).get("overrides") or {})
    out.update(trial_config.get("space") or {})
    return out


def trial_label(trial_config: dict[str, Any]) -> str:
    label = (trial_config.get("setting") or {}).get("label", "")
    space = ", ".join(f"{k}={_short(v)}" for k, v in (trial_config.get("space") or {}).items())
    return " ".join(p for p in (label, f"({space})" if label and space else space) if p) or "base"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> Config:
    """``base`` (a ``Config.to_dict()``) with dotted-key values set, validated."""
    data = copy.deepcopy(base)
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"sweep override {key!r}: {part!r} is not a config section")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"sweep override {key!r}: unknown field {leaf!r}; allowed: "
                              f"{sorted(node)}")
        node[leaf] = value
    return Config.from_dict(data)


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
        _write_text(f"{self.path.rstrip('/')}/{META_FILE}", json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, sweep_dir: str) -> SweepMeta:
        text = _read_text(f"{sweep_dir.rstrip('/')}/{META_FILE}")
        if text is None:
            raise FileNotFoundError(f"{sweep_dir} is not an aim-video sweep (no {META_FILE})")
        return cls(**json.loads(text))

    @property
    def train_storage(self) -> str:
        return f"{self.path.rstrip('/')}/{TRAIN_DIR}"


def _fs(path: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)


def _write_text(path: str, text: str) -> None:
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as fh:
        fh.write(text.encode())


def _read_text(path: str) -> str | None:
    import pyarrow.fs as pafs

    fs, p = _fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(p) as fh:
        return fh.read().decode()


# ----------------------------------------------------------------------------------------------
# The trial
# ----------------------------------------------------------------------------------------------

def run_trial(config: dict[str, Any], *, meta: SweepMeta) -> None:
    """One Tune trial: a Train run named after the trial id, nested in the sweep's MLflow run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .train import run_training

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
    from .train import _storage

    return f"{_storage(cfg).rstrip('/')}/{name}"


def plan_sweep(cfg: Config, study: str | None, space: SearchSpace | None = None, *,
               name: str | None = None, fractions: tuple[float, ...] | None = None,
               metric: str = "val_top1", mode: str = "max", asha: bool = False,
               max_concurrent: int | None = None, register_best: str | None = None) -> SweepMeta:
    """Resolve the study's settings and check every trial config before anything starts."""
    from . import tracking
    from .train import absolute_paths

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
    cfg = tracking.pin_tracking_uri(absolute_paths(cfg))
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


def default_concurrency(cfg: Config) -> int:
    """Trials that fit the cluster at once: each needs its workers plus at least one CPU for its
    decode tasks (two trials sharing one spare CPU for decoding crawled on two cores, seen here)."""
    import ray

    res = ray.cluster_resources()
    per_trial = cfg.run.num_workers * cfg.run.cpus_per_worker + max(1.0, cfg.run.ingest_cpus) + 0.1
    fit = math.floor(res.get("CPU", 1) / per_trial + 1e-9)
    if cfg.run.use_gpu or (cfg.run.use_gpu is None and res.get("GPU", 0) > 0):
        fit = min(fit, math.floor(res.get("GPU", 0) / (cfg.run.num_workers * cfg.run.gpus_per_worker)
                                  + 1e-9))
    if fit < 1:
        raise ConfigError(
            f"run: a trial needs {per_trial:.2f} CPUs (run.num_workers x run.cpus_per_worker + "
            f"decoding + 0.1 for the trial) but the cluster has {res.get('CPU', 0):g}: lower "
            f"run.cpus_per_worker or run.ingest_cpus (e.g. --set run.cpus_per_worker=0.5 "
            f"--set run.ingest_cpus=0.5), or it would wait forever")
    return fit


def run_sweep(meta: SweepMeta, *, resume: bool = False) -> SweepOutcome:
    """Run (or, with ``resume``, restore and finish) the sweep; report; register the best trial."""
    import ray
    from ray import tune

    from . import tracking
    from .train import ensure_ray

    if resume:
        meta = _merge_for_resume(meta)
    elif tune.Tuner.can_restore(meta.path) or _read_text(f"{meta.path}/{META_FILE}"):
        raise FileExistsError(f"sweep {meta.name!r} already exists at {meta.path}: pass --resume "
                              f"to finish it, or choose another name")
    ensure_ray()
    base = Config.from_dict(meta.base)
    with tracking.start_run(base, run_name=meta.name, run_id=meta.parent_run_id,
                            tags={"sweep": meta.name, "study": meta.study or "space",
                                  "role": "sweep"}) as parent:
        meta.parent_run_id = parent.info.run_id
        meta.save()
        tracking.mlflow.log_params({"sweep.study": meta.study or "space", "sweep.metric": meta.metric,
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
    concurrent = meta.max_concurrent or default_concurrency(base)
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
    logdir = meta.path if "://" in meta.path else str(Path(meta.path))
    print(f"[aim-video sweep] {meta.name}: {meta.path}\n"
          f"[aim-video sweep] TensorBoard: tensorboard --logdir {logdir}\n"
          f"[aim-video sweep] Ray dashboard: "
          f"{('http://' + dashboard) if dashboard and '://' not in dashboard else dashboard or 'n/a'}"
          f"\n[aim-video sweep] MLflow parent run {meta.parent_run_id} ({meta.tracking_uri})",
          flush=True)


def _finish(meta: SweepMeta) -> SweepOutcome:
    """After ``fit``: close runs of stopped trials, write the report, register the best model."""
    from . import tracking
    from .report import collect, write_report

    table = collect(meta.path)
    complete = all(r.status in ("TERMINATED", "ERROR") for r in table.rows)
    client = tracking.MlflowClient(meta.tracking_uri)
    for row in table.rows:  # trials stopped by ASHA or an interruption leave their run RUNNING
        if row.mlflow_run_id and client.get_run(row.mlflow_run_id).info.status == "RUNNING":
            client.set_terminated(row.mlflow_run_id, status="KILLED")
    report = write_report(meta.path, table=table)
    best = table.best(meta.metric, meta.mode)
    outcome = SweepOutcome(meta.path, meta.parent_run_id or "", complete,
                           best.trial_id if best else None, str(report))
    if best is not None:
        tracking.mlflow.set_tags({"best_trial": best.trial_id, "best_setting": best.setting})
        tracking.mlflow.log_metric(f"best_{meta.metric}", best.metric(meta.metric))
        print(f"[aim-video sweep] best trial {best.trial_id} ({best.setting}): {meta.metric} "
              f"{best.metric(meta.metric):.4f}", flush=True)
    if not complete:
        tracking.mlflow.set_tag("interrupted", "true")
        print(f"[aim-video sweep] not finished: resume with `aim-video sweep ... --resume` "
              f"(sweep {meta.path})", flush=True)
    elif meta.register_best and best is not None:
        outcome.registered_version = register_best(meta, best.mlflow_run_id)
    return outcome


def register_best(meta: SweepMeta, run_id: str | None) -> str:
    """Register the best trial's logged checkpoint as ``models:/<name>@champion``."""
    import tempfile

    from . import registry, tracking

    if run_id is None:
        raise RuntimeError("the best trial has no MLflow run to register from")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tracking.mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoint/model.pt", dst_path=tmp,
            tracking_uri=meta.tracking_uri)
        version = registry.register_model(ckpt, meta.register_best, "champion", run_id=run_id,
                                          cfg=Config.from_dict(meta.base))
    tracking.mlflow.set_tag("registered_model", f"{meta.register_best}/{version.version}")
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
