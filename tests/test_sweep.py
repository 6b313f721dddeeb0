"""Sweeps run the paper's studies as Tune trials of the training pipeline, tracked and reported.

Tiny on purpose (4 classes x 8 videos of 32x32, 2 epochs, one 0.5-CPU worker per trial, trials one
at a time on two cores: see ``pipelines.resources.trial_concurrency``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from aim_core.config import Config, ConfigError
from aim_core.tiny import pretrain_tiny_backbone
from pipelines.sweeps.report import collect
from pipelines.sweeps.settings import SweepConfig
from pipelines.sweeps.studies import DEFAULT_FRACTIONS
from pipelines.sweeps.sweep import plan_sweep, run_sweep
from pipelines.data.synthetic import generate_synthetic

CLASSES = ("blue_circle", "move_left_to_right", "move_right_to_left", "red_square")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-assets")
    generate_synthetic(root / "synthetic", videos_per_class=8, size=32, frames=16, classes=CLASSES)
    weights = pretrain_tiny_backbone(root / "tiny_vit.pt", steps=20)  # accuracy is not the point
    return root / "synthetic" / "videos", weights


@pytest.fixture
def paths_only(tmp_path):
    """Stand-ins for the videos and weights where nothing is read (config planning only)."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "weights.pt").touch()
    return tmp_path / "videos", tmp_path / "weights.pt"


@pytest.fixture(autouse=True)
def _no_active_mlflow_run():
    yield
    while mlflow.active_run():
        mlflow.end_run()


def make_cfg(tmp_path: Path, assets) -> Config:
    videos, weights = assets
    return Config.from_dict({
        "model": {"variant": "aim", "num_classes": len(CLASSES), "num_frames": 8, "image_size": 32,
                  "drop_path": 0.0, "head_dropout": 0.0,
                  "backbone": {"source": "tiny", "name": "aim-tiny-vit", "pretrained": str(weights),
                               "width": 64, "layers": 3, "heads": 4, "patch_size": 8}},
        "data": {"root": str(videos), "format": "folder", "val_fraction": 0.25, "sampler": "uniform",
                 "test_clips": 1, "test_crops": 1, "short_side": 32, "crop_scale": [0.6, 1.0],
                 "horizontal_flip": False, "videos_per_task": 8},
        "optim": {"epochs": 2, "batch_size": 8, "per_device_batch": 8, "lr": 3e-3,
                  "warmup_epochs": 0},
        "run": {"name": "sw", "storage_path": str(tmp_path / "runs"), "num_workers": 1,
                "cpus_per_worker": 0.5, "ingest_cpus": 0.25, "max_failures": 0,
                "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })


def sweep(space_file: Path | None = None, **settings) -> SweepConfig:
    """The sweep settings ``aim-video sweep`` builds from its flags and ``--space FILE``."""
    space = SweepConfig.read_space(space_file) if space_file else {}
    return SweepConfig.from_dict({"space": space, **settings})


def child_runs(parent_run_id: str, uri: str | None = None) -> dict[str, mlflow.entities.Run]:
    """The sweep's child runs by trial id."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags["trial_id"]: r for r in runs}


def epochs_logged(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, "train_loss"))


# ----------------------------------------------------------------------------------------------
# Studies and spaces (no Ray)
# ----------------------------------------------------------------------------------------------

def test_the_studies_are_the_papers_ablations(tmp_path, paths_only):
    cfg = make_cfg(tmp_path, paths_only)
    labels = lambda study, **kw: [s["label"] for s in
                                  plan_sweep(cfg, sweep(study=study, **kw)).settings]
    assert labels("components") == [
        "frozen_space_only", "finetuned_space_only", "timesformer", "aim[spatial]",
        "aim[spatial,temporal]", "aim[spatial,temporal,joint]"]
    assert labels("placement") == ["bottom:1", "top:1", "every:2", "all"]  # 3 blocks: K = 1
    assert labels("ratio") == ["ratio=0.0625", "ratio=0.125", "ratio=0.25", "ratio=0.5"]
    assert labels("data-fraction") == [f"{v}@{f:g}" for f in DEFAULT_FRACTIONS
                                       for v in ("aim", "timesformer")]
    assert labels("data-fraction", fractions=[0.5, 1.0]) == [
        "aim@0.5", "timesformer@0.5", "aim@1", "timesformer@1"]
    components = plan_sweep(cfg, sweep(study="components")).settings
    assert components[3]["overrides"] == {"model.variant": "aim",
                                          "model.adapter.adaptations": ["spatial"]}


def test_a_space_file_accepts_the_four_kinds_and_names_bad_entries(tmp_path, paths_only):
    cfg = make_cfg(tmp_path, paths_only)
    good = tmp_path / "space.yaml"
    good.write_text("num_samples: 3\nparams:\n  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
                    "  optim.weight_decay: {uniform: [0.0, 0.1]}\n"
                    "  model.adapter.ratio: {grid: [0.125, 0.25]}\n"
                    "  model.adapter.placement: {choice: [all, 'top:2']}\n")
    meta = plan_sweep(cfg, sweep(good))
    assert meta.config.space.num_samples == 3 and meta.settings == []
    for text, message in (("params: {optim.lr: {normal: [0, 1]}}", "space.params.optim.lr"),
                          ("params: {optim.lr: {uniform: [2, 1]}}", "low < high"),
                          ("params: {optim.lrr: 0.1}", "unknown field 'lrr'")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            sweep(bad)
    with pytest.raises(ConfigError, match="sweep.study: expected one of"):
        sweep(study="ratios")
    with pytest.raises(ConfigError, match="a study .* and/or a search space"):
        sweep()


def test_the_metric_must_be_one_the_trials_report_when_the_scheduler_reads_it(tmp_path, paths_only):
    cfg = make_cfg(tmp_path, paths_only)
    assert plan_sweep(cfg, sweep(study="ratio", metric="final_top1")).config.metric == "final_top1"
    assert plan_sweep(cfg, sweep(study="ratio", metric="train_loss", mode="min", asha=True)
                      ).config.asha
    with pytest.raises(ConfigError,
                       match=r"sweep.metric: expected one of .*'val_top1'.*got 'val_acc'"):
        sweep(study="ratio", metric="val_acc")
    with pytest.raises(ConfigError, match="ASHA compares trials after every epoch"):
        sweep(study="ratio", metric="final_top1", asha=True)  # only known at the end
    sparse = cfg.with_overrides({"optim.eval_every": 2})
    with pytest.raises(ConfigError, match="optim.eval_every=1"):
        plan_sweep(sparse, sweep(study="ratio", asha=True))


# ----------------------------------------------------------------------------------------------
# Sweeps on Ray
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_data_fraction_sweep_tracks_each_trial_and_reports_their_own_numbers(
        tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets)
    meta = plan_sweep(cfg.with_overrides({"run.register_as": "sweep-best"}),
                      sweep(study="data-fraction", fractions=[0.34, 0.67]))
    outcome = run_sweep(meta)

    assert outcome.complete
    children = child_runs(outcome.parent_run_id)
    assert len(children) == 4                          # one child run per trial, one parent
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert epochs_logged(run.info.run_id) == [1, 2]      # per-epoch metrics, once each

    # The subsets the trials actually trained on: stratified, nested, the same for both models.
    used = {}
    for run in children.values():
        videos = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/ingest/train_videos.json")
        key = (run.data.params["model.variant"], float(run.data.params["data.train_fraction"]))
        used[key] = (set(videos["video_ids"]), Counter(videos["labels"]))
    assert set(used) == {(v, f) for v in ("aim", "timesformer") for f in (0.34, 0.67)}
    for f, per_class in ((0.34, 2), (0.67, 4)):       # of 6 training videos per class
        assert used[("aim", f)][0] == used[("timesformer", f)][0]
        assert used[("aim", f)][1] == Counter({c: per_class for c in range(len(CLASSES))})
    assert used[("aim", 0.34)][0] < used[("aim", 0.67)][0]

    # The report holds the trials' own numbers.
    table = collect(outcome.path)
    rows = json.loads((Path(outcome.report_dir) / "results.json").read_text())
    report = (Path(outcome.report_dir) / "report.md").read_text()
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in table.rows] == sorted(children)
    for row, trial in zip(rows, table.rows):
        run = children[row["trial_id"]]
        assert row["top1"] == run.data.metrics["final_top1"] == trial.results["final_top1"]
        assert row["top5"] == run.data.metrics["final_top5"] == trial.results["final_top5"]
        assert row["tunable_params"] == run.data.metrics["cost/tunable_params"]
        assert row["gmacs_per_view"] == run.data.metrics["cost/gmacs_per_view"]
        assert (f"| {row['setting']} | {row['variant']} |" in report
                and f"| {100 * row['top1']:.1f} | {100 * row['top5']:.1f} |" in report)
    by_variant = {r["variant"]: r["tunable_params"] for r in rows}
    assert by_variant["aim"] < by_variant["timesformer"]  # adapters vs full fine-tuning

    plots = {p.name for p in Path(outcome.report_dir).glob("*.png")}
    assert plots == {"accuracy_vs_params.png", "accuracy_vs_fraction.png"}  # no ratio axis here
    logged = {a.path for a in MlflowClient().list_artifacts(outcome.parent_run_id, "report")}
    assert {"report/report.md", "report/accuracy_vs_fraction.png"} <= logged
    # TensorBoard's run list, Tune's folders and MLflow's child runs name trials by their setting.
    event_dirs = {p.parent.name for p in Path(outcome.path).glob("*/events.out.tfevents.*")}
    assert {d.rsplit("_", 2)[0] for d in event_dirs} == {"aim@0.34", "timesformer@0.34",
                                                         "aim@0.67", "timesformer@0.67"}
    for trial_id, run in children.items():
        assert run.info.run_name == f"{run.data.tags['setting']}_{trial_id}"

    best = table.best("val_top1", "max")
    assert outcome.best_trial == best.trial_id
    champion = MlflowClient().get_model_version_by_alias("sweep-best", "champion")
    assert champion.run_id == best.mlflow_run_id


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_retraining_finished_trials(
        tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets)
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  optim.lr: {grid: [1.0e-3, 1.0e-2]}\n")
    meta = plan_sweep(cfg, sweep(space, max_concurrent=1))
    watcher = threading.Thread(target=_interrupt_when_a_trial_is_done_and_another_half_way,
                               args=(meta,), daemon=True)
    watcher.start()
    first = run_sweep(meta)                           # Ctrl-C after trial 1 and epoch 1 of trial 2
    watcher.join(timeout=5)

    assert not first.complete
    before = child_runs(first.parent_run_id)
    finished = {t: r for t, r in before.items() if "final_top1" in r.data.metrics}
    half_way = [t for t in before if t not in finished]
    assert len(finished) == 1 and len(half_way) == 1
    train_dir = Path(first.path) / "train"            # Train runs are named like the trials' runs
    checkpoints = {t: sorted(p.name for p in (train_dir / r.info.run_name).glob("checkpoint_*"))
                   for t, r in before.items()}
    assert checkpoints[half_way[0]]                   # it had an epoch-1 checkpoint to resume from

    second = run_sweep(meta, resume=True)

    assert second.complete and second.parent_run_id == first.parent_run_id
    after = child_runs(second.parent_run_id)
    assert len(after) == 2                            # the half-way trial kept its run
    (done_id, done_run), = finished.items()           # the finished trial was not trained again
    assert after[done_id].data.metrics["final_top1"] == done_run.data.metrics["final_top1"]
    assert sorted(p.name for p in (train_dir / done_run.info.run_name).glob("checkpoint_*")) == \
        checkpoints[done_id]
    for run in after.values():                        # no epoch ran twice, the half-way one included
        assert run.info.status == "FINISHED"
        assert epochs_logged(run.info.run_id) == [1, 2]
    assert sorted(float(r.data.params["optim.lr"]) for r in after.values()) == [1e-3, 1e-2]


@pytest.mark.slow
def test_asha_stops_a_trial_that_falls_behind_at_the_first_rung(tmp_path, assets, local_ray):
    cfg = make_cfg(tmp_path, assets)
    space = tmp_path / "space.yaml"                   # a sane learning rate, then one that diverges
    space.write_text("params:\n  optim.lr: {grid: [1.0e-3, 1.0]}\n"
                     "asha: {grace_period: 1, reduction_factor: 2}\n")
    meta = plan_sweep(cfg, sweep(space, metric="train_loss", mode="min", asha=True,
                                 max_concurrent=1))  # one at a time: the second meets a full rung
    outcome = run_sweep(meta)

    assert outcome.complete
    runs = {float(r.data.params["optim.lr"]): r for r in child_runs(outcome.parent_run_id).values()}
    sane, diverged = runs[1e-3], runs[1.0]
    assert sane.info.status == "FINISHED" and epochs_logged(sane.info.run_id) == [1, 2]
    assert diverged.info.status == "KILLED" and epochs_logged(diverged.info.run_id) == [1]
    assert "final_top1" not in diverged.data.metrics  # stopped before its final evaluation
    assert outcome.best_trial == sane.data.tags["trial_id"]
    table = collect(outcome.path)
    assert [r.trial_id for r in table.rows if r.finished] == [outcome.best_trial]


def _interrupt_when_a_trial_is_done_and_another_half_way(meta) -> None:
    """Ctrl-C the sweep once one trial finished and the next one has an epoch-1 checkpoint."""
    client, deadline = MlflowClient(meta.tracking_uri), time.time() + 900
    while time.time() < deadline:
        time.sleep(0.3)
        meta_file = Path(meta.path) / "aim_sweep.json"
        if not meta_file.is_file():
            continue
        parent = json.loads(meta_file.read_text())["parent_run_id"]
        runs = child_runs(parent, meta.tracking_uri) if parent else {}
        done = [r for r in runs.values() if "final_top1" in r.data.metrics]
        started = [r for r in runs.values() if r.info.status == "RUNNING"
                   and "final_top1" not in r.data.metrics
                   and client.get_metric_history(r.info.run_id, "train_loss")]
        if done and started:
            os.kill(os.getpid(), signal.SIGINT)
            return
