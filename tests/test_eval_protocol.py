"""The test protocol (clips x crops, frames, sampling) travels with every evaluation result."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from aim_core.config import Config
from aim_core.video import eval_protocol
from pipelines.evaluation.evaluate import log_report, summary

CONFIGS = Path(__file__).parent.parent / "configs"


RELEASED_UNIFORM = "uniform segments (the released rule)"


@pytest.mark.parametrize("preset, views, text", [
    ("k400_vitb16_8f", (3, 1), "3 clips x 1 crop of 8 frames, dense, every 16 frames"),
    ("k700_vitb16_8f", (3, 3), "3 clips x 3 crops of 8 frames, dense, every 16 frames"),
    ("k700_vitl14_32f", (3, 3), "3 clips x 3 crops of 32 frames, dense, every 4 frames"),
    ("ssv2_vitl14_16f", (1, 3), f"1 clip x 3 crops of 16 frames, {RELEASED_UNIFORM}"),
    ("diving48_vitb16_32f", (1, 3), f"1 clip x 3 crops of 32 frames, {RELEASED_UNIFORM}"),
    ("diving48_vitl14_32f", (1, 1), f"1 clip x 1 crop of 32 frames, {RELEASED_UNIFORM}"),
])
def test_presets_test_as_the_released_configs(preset: str, views, text: str) -> None:
    cfg = Config.load(CONFIGS / f"{preset}.yaml")
    protocol = eval_protocol(cfg)
    assert (protocol.clips, protocol.crops) == views and str(protocol) == text


METRICS = {"top1": 0.5, "top5": 0.9, "mean_class_acc": 0.45, "num_videos": 20,
           "protocol": "3 clips x 3 crops of 8 frames, dense, every 16 frames"}


def test_the_summary_line_names_the_protocol() -> None:
    assert summary(METRICS).endswith("on 20 videos (3 clips x 3 crops of 8 frames, dense, every 16 "
                                     "frames)")


def test_the_protocol_is_tagged_on_the_mlflow_run(tmp_path: Path, isolated_mlflow) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        pass
    log_report(run.info.run_id, METRICS, files=[])
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["eval_protocol"] == METRICS["protocol"]
