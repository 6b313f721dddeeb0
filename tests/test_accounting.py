"""Parameter and multiply-accumulate counts reproduce the paper's tables (counted on the meta device)."""

from __future__ import annotations

import pytest

from aim_core.accounting import model_cost
from aim_core.config import AdapterConfig, BackboneConfig, Config, DataConfig, ModelConfig

CLIP_B16 = BackboneConfig(source="open_clip", name="ViT-B-16")
CLIP_L14 = BackboneConfig(source="open_clip", name="ViT-L-14")
IN21K_B16 = BackboneConfig(source="timm", name="vit_base_patch16_224")


def cost(backbone=CLIP_B16, classes=400, views=1, variant="aim", **adapter):
    return model_cost(ModelConfig(variant=variant, backbone=backbone, num_classes=classes,
                                  adapter=AdapterConfig(**adapter)), views=views)


def millions(n: int) -> float:
    return n / 1e6


@pytest.mark.parametrize("backbone,classes,two_temporal,total,tunable,gmacs,views,all_views", [
    (CLIP_B16, 400, False, 97, 11, 202, 3, 606),     # Table 2, K400
    (CLIP_B16, 174, True, 100, 14.3, 208, 3, 624),   # Table 3, SSv2
    (CLIP_L14, 400, False, 341, 38, 934, 3, 2802),   # Table 2, K400
    (CLIP_L14, 174, True, 354, 50, 959, 3, 2877),    # Table 3, SSv2 (50.6M, printed as 50)
])
def test_paper_model_sizes_and_gmacs(backbone, classes, two_temporal, total, tunable, gmacs,
                                      views, all_views):
    c = cost(backbone, classes, views, temporal_adapters=2 if two_temporal else 1)
    assert millions(c.total_params) == pytest.approx(total, abs=0.6)
    # The paper prints whole millions and truncates (50.6M appears as 50).
    assert millions(c.tunable_params) == pytest.approx(tunable, abs=0.7 if tunable > 20 else 0.06)
    assert c.gmacs_per_view == pytest.approx(gmacs, abs=1.0)
    assert c.gmacs_all_views == pytest.approx(all_views, rel=0.005)


@pytest.mark.parametrize("ratio,tunable", [(0.0625, 3.0), (0.125, 5.6), (0.25, 11.0), (0.5, 21.0)])
def test_bottleneck_ratio_table_8(ratio, tunable):
    assert millions(cost(ratio=ratio).tunable_params) == pytest.approx(tunable, abs=0.65 if ratio == 0.5 else 0.1)


@pytest.mark.parametrize("placement", ["top:6", "bottom:6", "every:2"])
def test_half_the_blocks_table_7(placement):
    assert millions(cost(placement=placement).tunable_params) == pytest.approx(5.6, abs=0.05)


@pytest.mark.parametrize("variant,adaptations,total,tunable", [
    ("frozen_space_only", ["spatial"], 86, 0.1),
    ("finetuned_space_only", ["spatial"], 86, 86),
    ("timesformer", ["spatial"], 121, 121),
    ("aim", ["spatial"], 89, 3.7),
    ("aim", ["spatial", "temporal"], 97, 10.8),
    ("aim", ["spatial", "temporal", "joint"], 100, 14.3),
])
def test_components_table_1_on_imagenet21k_vit(variant, adaptations, total, tunable):
    c = cost(IN21K_B16, 174, variant=variant, adaptations=adaptations, temporal_adapters=2)
    assert millions(c.total_params) == pytest.approx(total, abs=0.6)
    assert millions(c.tunable_params) == pytest.approx(tunable, abs=0.6 if tunable > 50 else 0.06)


def test_views_follow_the_data_config():
    cfg = Config(model=ModelConfig(backbone=CLIP_B16), data=DataConfig(test_clips=3, test_crops=1))
    assert model_cost(cfg).views == 3


def test_a_frozen_backbone_makes_the_backward_pass_about_one_forward_instead_of_two():
    aim, full = cost(), cost(variant="timesformer")
    assert aim.train_gmacs_per_clip / aim.gmacs_per_view == pytest.approx(2.1, abs=0.1)
    assert full.train_gmacs_per_clip / full.gmacs_per_view == pytest.approx(3.0, abs=0.05)
    assert aim.train_gmacs_per_clip / full.train_gmacs_per_clip == pytest.approx(0.72, abs=0.01)
    recompute = model_cost(ModelConfig(backbone=CLIP_B16, grad_checkpointing=True))
    assert (recompute.train_gmacs_per_clip - aim.train_gmacs_per_clip
            == pytest.approx(aim.gmacs_per_view, rel=0.01))      # checkpointing: one more forward
