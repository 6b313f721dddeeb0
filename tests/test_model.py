"""The AIM model behaves as the paper specifies it."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from aim_core.backbones import build_model
from aim_core.config import BackboneConfig, ModelConfig
from aim_core.official import load_official_checkpoint

from .modeltools import FRAMES, clips, perturb_adapters, tiny_cfg
from .official_reference import OfficialAIM

def test_aim_at_initialisation_is_the_frozen_image_model_averaged_over_frames(clip_tower):
    tower, path = clip_tower
    model = build_model(tiny_cfg(weights=path)).eval()
    x = clips()
    with torch.no_grad():
        per_frame = torch.stack([tower(x[:, :, t]) for t in range(FRAMES)], dim=1)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, per_frame.mean(dim=1), atol=1e-5, rtol=1e-5)


def test_timm_weights_load_and_match_timm_features(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0).eval()
    path = tmp_path / "vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    cfg = ModelConfig(backbone=BackboneConfig(source="timm", name="vit_tiny_patch16_224",
                                              pretrained=str(path)),
                      num_classes=3, num_frames=FRAMES, image_size=32, drop_path=0.0)
    model = build_model(cfg).eval()
    x = clips()
    with torch.no_grad():
        per_frame = torch.stack([reference.forward_features(x[:, :, t])[:, 0]
                                 for t in range(FRAMES)], dim=1)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, per_frame.mean(dim=1), atol=1e-4, rtol=1e-4)
    assert model.backbone_identity.sha256 and not model.backbone_identity.random_init


def test_reversing_frames_changes_aim_but_not_space_only():
    x = clips()
    reversed_x = x.flip(dims=[2])
    aim = build_model(tiny_cfg()).eval()
    perturb_adapters(aim)
    space_only = build_model(tiny_cfg("finetuned_space_only")).eval()
    spatial_only = build_model(tiny_cfg(adaptations=["spatial", "joint"])).eval()
    perturb_adapters(spatial_only)
    with torch.no_grad():
        assert not torch.allclose(aim(x), aim(reversed_x), atol=1e-4)
        torch.testing.assert_close(space_only(x), space_only(reversed_x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(spatial_only(x), spatial_only(reversed_x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant,adaptations,expect_frozen_backbone", [
    ("aim", ["spatial", "temporal", "joint"], True),
    ("aim", ["spatial"], True),
    ("frozen_space_only", [], True),
    ("timesformer", [], False),
])
def test_only_tunable_tensors_get_gradients_and_frozen_ones_never_change(
        variant, adaptations, expect_frozen_backbone):
    model = build_model(tiny_cfg(variant, adaptations=adaptations or ["spatial"]))
    model.train()
    frozen_before = {k: v.detach().clone() for k, v in model.named_parameters()
                     if not v.requires_grad}
    tunable_before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert bool(frozen_before) == expect_frozen_backbone
    if expect_frozen_backbone:
        assert all(model.is_tunable(k) == (("adapter" in k) or k.startswith(("head.", "ln_post"))
                                           or k == "temporal_embedding")
                   for k in tunable_before) or variant == "frozen_space_only"
    optimiser = torch.optim.AdamW(model.tunable_parameters(), lr=1e-2, weight_decay=0.05)
    labels = torch.tensor([0, 3])
    for step in range(3):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(clips(seed=step)), labels)
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        optimiser.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), f"frozen {name} changed"
    changed = [k for k, v in model.named_parameters() if k in tunable_before
               and not torch.equal(v, tunable_before[k])]
    assert "head.weight" in changed


def test_frozen_space_only_trains_only_the_head():
    model = build_model(tiny_cfg("frozen_space_only"))
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}


def test_placement_puts_adapters_only_in_the_chosen_blocks():
    model = build_model(tiny_cfg(placement="top:1"))
    adapted = [i for i, b in enumerate(model.blocks) if b.s_adapter is not None]
    assert adapted == [2]
    assert build_model(tiny_cfg(placement=[0, 2])).blocks[1].t_adapter is None


def test_second_temporal_adapter_is_added_before_temporal_attention():
    model = build_model(tiny_cfg(temporal_adapters=2))
    assert all(b.t_adapter_in is not None and b.t_adapter_in.skip for b in model.blocks)


def test_timesformer_starts_as_the_image_model_with_copied_temporal_attention(clip_tower):
    tower, path = clip_tower
    ts = build_model(tiny_cfg("timesformer", weights=path)).eval()
    block = ts.blocks[0]
    assert torch.equal(block.attn_t.in_proj_weight, block.attn.in_proj_weight)
    x = clips()
    with torch.no_grad():
        per_frame = torch.stack([tower(x[:, :, t]) for t in range(FRAMES)], dim=1).mean(1)
        torch.testing.assert_close(ts.forward_head(ts.forward_features(x), pre_logits=True),
                                   per_frame, atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for p in ts.parameters())


@pytest.mark.parametrize("setting", [True, 2])
def test_grad_checkpointing_gives_the_same_gradients(setting):
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    perturb_adapters(model)
    twin = copy.deepcopy(model)
    twin.set_grad_checkpointing(setting)
    for m in (model, twin):
        m.train()
        m(clips()).sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("variant,adapter", [
    ("aim", {}), ("aim", {"temporal_adapters": 2}), ("aim", {"adaptations": ["spatial", "joint"]}),
    ("timesformer", {}), ("finetuned_space_only", {}),
])
def test_shortcuts_give_the_logits_and_gradients_of_the_literal_equations(variant, adapter):
    """CLS-only last block and T-MSA's projection folded into the temporal adapter change nothing
    but the amount of work."""
    torch.manual_seed(0)
    fast = build_model(tiny_cfg(variant, **adapter)).train()
    perturb_adapters(fast)
    literal = copy.deepcopy(fast)
    literal.set_shortcuts(False)
    x = clips()
    outputs = []
    for model in (fast, literal):
        logits = model(x)
        logits.square().sum().backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(fast.named_parameters(), literal.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shortcuts_do_less_work_than_the_paper_counts():
    from aim_core.accounting import gmacs_per_view

    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    fast = gmacs_per_view(model, cfg)
    model.set_shortcuts(False)
    assert fast < 0.97 * gmacs_per_view(model, cfg)


def test_model_compile_in_the_config_compiles_every_model_built_from_it():
    # build_model is where training, evaluation, prediction and serving get their models
    cfg = tiny_cfg()
    cfg.compile = True
    assert all(block._compiled_call_impl is not None for block in build_model(cfg).blocks)
    assert all(block._compiled_call_impl is None for block in build_model(tiny_cfg()).blocks)


@pytest.mark.slow  # compiling takes about a minute per precision on two cores (C++ codegen)
@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_compiled_and_eager_models_give_the_same_logits_and_gradients(precision, tolerance):
    from aim_core.model import compile_model

    torch.manual_seed(0)
    eager = build_model(tiny_cfg(temporal_adapters=2)).train()
    perturb_adapters(eager)
    compiled = compile_model(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = clips()
    logits = []
    for model in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x).float()
        out.square().sum().backward()
        logits.append(out)
    scale = logits[0].abs().max().item()
    torch.testing.assert_close(logits[1], logits[0], atol=tolerance * scale, rtol=tolerance)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=tolerance * a.grad.abs().max().item(),
                                       rtol=tolerance, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), atol=1e-5, rtol=1e-5)


def test_quick_gelu_mlp_computes_the_literal_formula_and_its_gradients():
    from aim_core.vit import Mlp

    torch.manual_seed(0)
    mlp = Mlp(16, 64, "quick_gelu")
    x = torch.randn(3, 5, 16, requires_grad=True)
    h = mlp.c_fc(x)
    literal = mlp.c_proj(h * torch.sigmoid(1.702 * h))
    fused = mlp(x)
    torch.testing.assert_close(fused, literal)
    (grad_fused,) = torch.autograd.grad(fused.square().sum(), x)
    (grad_literal,) = torch.autograd.grad(literal.square().sum(), x)
    torch.testing.assert_close(grad_fused, grad_literal)


@pytest.mark.parametrize("num_tadapter", [1, 2])
def test_released_checkpoint_loads_and_reproduces_official_logits(tmp_path, num_tadapter):
    torch.manual_seed(0)
    reference = OfficialAIM(size=32, frames=FRAMES, patch=8, d=128, layers=2, classes=7,
                            num_tadapter=num_tadapter, scale=1.0 if num_tadapter == 2 else 0.5).eval()
    with torch.no_grad():  # released weights are trained: no zero adapters
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "aim_official.pth"
    torch.save({"meta": {"epoch": 30}, "state_dict": reference.state_dict()}, path)

    model = load_official_checkpoint(path)
    assert not model.training
    assert (model.cfg.num_frames, model.cfg.num_classes, model.spec.width) == (FRAMES, 7, 128)
    assert model.cfg.adapter.temporal_adapters == num_tadapter
    x = clips()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=1e-4)


def test_released_checkpoint_overrides_and_rejects_other_files(tmp_path):
    reference = OfficialAIM(frames=FRAMES)
    path = tmp_path / "aim.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    assert load_official_checkpoint(path, scale=0.25).cfg.adapter.scale == 0.25
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, other)
    with pytest.raises(Exception, match="not an official AIM checkpoint"):
        load_official_checkpoint(other)


def test_random_backbone_is_said_loudly_and_recorded(caplog):
    model = build_model(tiny_cfg())
    assert "RANDOMLY INITIALISED" in caplog.text
    assert model.backbone_identity.random_init


def test_each_variant_trains_what_table_1_says():
    trained = {variant: {k.split(".")[0] for k, p in build_model(tiny_cfg(variant), device="meta")
                         .named_parameters() if p.requires_grad}
               for variant in ("aim", "frozen_space_only", "finetuned_space_only", "timesformer")}
    assert trained["aim"] == {"temporal_embedding", "blocks", "ln_post", "head"}
    assert trained["frozen_space_only"] == {"head"}
    assert trained["finetuned_space_only"] == trained["timesformer"] - {"temporal_embedding"} == {
        "patch_embed", "blocks", "ln_pre", "ln_post", "head"}
    spatial_only = build_model(tiny_cfg(adaptations=["spatial"]), device="meta")
    assert spatial_only.temporal_embedding is None   # nothing attends across time


def test_the_backbone_identity_is_known_however_the_model_is_built(clip_tower):
    _, weights = clip_tower
    declared = build_model(tiny_cfg(weights=weights), device="meta").backbone_identity
    loaded = build_model(tiny_cfg(weights=weights)).backbone_identity
    assert (declared.pretrained, declared.sha256, declared.random_init) == (weights, None, False)
    assert loaded.pretrained == weights and len(loaded.sha256) == 64


def test_wrong_frame_count_is_a_clear_error():
    with pytest.raises(ValueError, match="built for 4 frames"):
        build_model(tiny_cfg())(torch.zeros(1, 3, 2, 32, 32))
