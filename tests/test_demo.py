"""The README's main job, `aim-video demo`, end to end at a small scale: both models trained on local
Ray from real MP4s, tracked in the local MLflow store, the better one registered and loadable."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from aim_core.tiny import pretrain_tiny_backbone
from pipelines.tracking import references
from pipelines.demo import REGISTERED_NAME, run_demo


@pytest.mark.slow
def test_the_demo_trains_both_models_tracks_them_and_registers_the_better_one(
        tmp_path, monkeypatch, isolated_mlflow, local_ray, capsys):
    monkeypatch.chdir(tmp_path)                       # the demo's paths are relative, as in README
    data = tmp_path / "demo_data"
    pretrain_tiny_backbone(data / "tiny_vit.pt", steps=20)   # a quick stand-in for the ~1 min one
    rows = run_demo(data, overrides={"optim.epochs": 1, "optim.warmup_epochs": 0},
                    videos_per_class=4)

    assert [(r.label, r.variant) for r in rows] == [("AIM", "aim"),
                                                    ("frozen space-only", "frozen_space_only")]
    assert rows[0].tunable_params > rows[1].tunable_params
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for row in rows:
        run = client.get_run(row.mlflow_run_id)
        assert run.info.status == "FINISHED" and "final_top1" in run.data.metrics
    best = max(rows, key=lambda r: r.top1)
    champion = client.get_model_version_by_alias(REGISTERED_NAME, "champion")
    assert champion.run_id == best.mlflow_run_id
    model, cfg, names = references.resolve_model(f"models:/{REGISTERED_NAME}@champion")
    assert cfg.model.variant == best.variant and len(names) == cfg.model.num_classes
    out = capsys.readouterr().out
    assert f"models:/{REGISTERED_NAME}@champion" in out and "temporal-order" in out
