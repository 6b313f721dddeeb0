"""The README's main job, `aim-video demo`, end to end at a small scale, as a user runs it: both
models trained on a fresh local Ray from real MP4s, tracked in the local MLflow store, the better
one registered and loadable, and a console a person can read."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from aim_core.tiny import pretrain_tiny_backbone
from pipelines.demo import REGISTERED_NAME
from pipelines.tracking import references

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^\[aim-video train\] epoch (\d+)/(\d+) ")


@pytest.mark.slow
def test_the_demo_trains_both_models_registers_the_better_one_and_stays_readable(
        tmp_path, isolated_mlflow, monkeypatch):
    data = tmp_path / "demo_data"
    pretrain_tiny_backbone(data / "tiny_vit.pt", steps=20)   # a quick stand-in for the ~1 min one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AIM_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--videos-per-class", "4",
         "--set", "optim.epochs=2", "--set", "optim.warmup_epochs=0",
         "--set", "run.print_every=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])

    # Our own lines only: each epoch of each run once, the table, where to look next.
    assert len(console) <= 40, "\n".join(console)
    epochs = [EPOCH_LINE.match(line).groups() for line in console if EPOCH_LINE.match(line)]
    assert sorted(epochs) == [("1", "2"), ("1", "2"), ("2", "2"), ("2", "2")]
    assert not [line for line in console if "Starting execution" in line or "INFO" in line]
    text = "\n".join(console)
    assert f"models:/{REGISTERED_NAME}@champion" in text and "temporal-order" in text
    log = Path(re.search(r"^log:\s+(\S+)$", text, re.M).group(1))
    assert log.is_file() and "ray" in log.read_text().lower()   # Ray's own logging went here

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    champion = client.get_model_version_by_alias(REGISTERED_NAME, "champion")
    demo_runs = client.search_runs([client.get_experiment_by_name("aim-video-demo").experiment_id])
    assert len(demo_runs) == 2 and all(r.info.status == "FINISHED" for r in demo_runs)
    # the champion is a run with the best final top-1 (on a tie, either of them)
    best = max(r.data.metrics["final_top1"] for r in demo_runs)
    champion_run = next(r for r in demo_runs if r.info.run_id == champion.run_id)
    assert champion_run.data.metrics["final_top1"] == best
    model, cfg, names = references.resolve_model(f"models:/{REGISTERED_NAME}@champion")
    assert cfg.model.variant == champion_run.data.params["model.variant"]
    assert len(names) == cfg.model.num_classes
