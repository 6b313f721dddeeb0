"""Every preset in configs/ loads, validates and follows the paper's recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from aim_core.config import Config
from pipelines.cli import main

PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*_vit*_*f.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads(path):
    cfg = Config.load(path)
    dataset, backbone, frames = path.stem.split("_")
    assert cfg.model.num_frames == int(frames[:-1])
    assert cfg.model.num_classes == {"k400": 400, "k700": 700, "ssv2": 174, "diving48": 48}[dataset]
    assert cfg.model.backbone.name.startswith({"vitb16": "ViT-B-16", "vitl14": "ViT-L-14"}[backbone])
    assert (cfg.optim.schedule, cfg.optim.warmup_epochs, cfg.optim.warmup_ratio) == \
        ("mmcv_cosine", 2.5, 0.1)
    assert cfg.optim.no_weight_decay == "released"
    released_lr_mult = backbone == "vitl14" and dataset in ("k400", "ssv2")
    assert cfg.optim.lr_mult == ({"backbone": 0.1} if released_lr_mult else {})
    assert cfg.data.pca_lighting == (0.1 if (dataset, backbone) == ("k400", "vitl14") else 0.0)
    if dataset == "ssv2":
        assert cfg.model.adapter.temporal_adapters == 2 and not cfg.data.horizontal_flip
        assert cfg.data.rand_augment == "imgaug-n4-m7" and cfg.data.sampler == "uniform"
        assert (cfg.data.test_clips, cfg.data.test_crops) == (1, 3)
    if dataset.startswith("k"):
        assert cfg.data.frame_interval * cfg.model.num_frames == 128
        assert (cfg.data.test_clips, cfg.optim.epochs) == (3, 30)
    if dataset != "ssv2":  # ThreeCrop in the K700 and Diving-48 ViT-B/16 configs
        three = dataset == "k700" or (dataset, backbone) == ("diving48", "vitb16")
        assert cfg.data.test_crops == (3 if three else 1)


def test_describe_prints_the_paper_numbers(capsys):
    assert main(["describe", "configs/k400_vitb16_8f.yaml"]) == 0
    out = capsys.readouterr().out
    assert "96.76 M" in out and "10.97 M" in out and "606." in out


def test_describe_reports_a_bad_override_by_field(capsys):
    assert main(["describe", "configs/k400_vitb16_8f.yaml", "--set", "model.adapter.ratio=7"]) == 2
    assert "model.adapter.ratio" in capsys.readouterr().err


def test_a_secret_in_a_config_is_refused(tmp_path, capsys):
    path = tmp_path / "leaky.yaml"
    path.write_text("_base_: %s\nrun:\n  tracking_uri: https://user:hunter2@mlflow.example.com\n"
                    % (Path(__file__).parent.parent / "configs" / "k400_vitb16_8f.yaml"))
    assert main(["describe", str(path)]) == 2
    err = capsys.readouterr().err
    assert "run.tracking_uri" in err and "hunter2" not in err
