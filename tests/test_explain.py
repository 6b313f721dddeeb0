"""Attention maps read the model's own last block, and ``aim-video explain`` draws them (Fig. 4)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from einops import rearrange
from mlflow import MlflowClient
from PIL import Image

from aim_core.attention import cls_attention_maps
from aim_core.backbones import build_model
from aim_core.checkpoint import save_model
from aim_core.config import Config, DataConfig
from pipelines.cli import main
from pipelines.evaluation.explain import frame_indices, run_explain
from pipelines.data.synthetic import render_video, write_mp4

from .modeltools import clips, perturb_adapters, tiny_cfg

TEMPORAL = {"aim": ["spatial", "temporal", "joint"], "timesformer": ["spatial"]}
SPACE_ONLY = {"frozen_space_only": ["spatial"], "finetuned_space_only": ["spatial"],
              "aim": ["spatial", "joint"]}
GRID = 32 // 8


def trained(variant: str, adaptations: list[str], frames: int = 4) -> torch.nn.Module:
    cfg = replace(tiny_cfg(variant, adaptations=adaptations), num_frames=frames)
    model = build_model(cfg).eval()
    perturb_adapters(model)
    return model


def one_clip(frames: int = 4) -> torch.Tensor:
    return torch.randn(1, 3, frames, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("variant,adaptations", [*TEMPORAL.items(), *SPACE_ONLY.items()])
def test_spatial_maps_are_distributions_over_each_frames_patches(variant, adaptations):
    maps = cls_attention_maps(trained(variant, adaptations), clips(1))
    spatial = maps["spatial"]
    assert spatial.shape == (4, GRID, GRID)
    assert (spatial >= 0).all()
    torch.testing.assert_close(spatial.sum(dim=(1, 2)), torch.ones(4))


@pytest.mark.parametrize("variant,adaptations", list(TEMPORAL.items()))
def test_models_with_temporal_attention_give_frame_distributions_and_saliency(variant, adaptations):
    maps = cls_attention_maps(trained(variant, adaptations, frames=6), one_clip(6))
    assert maps["temporal"].shape == (6, 6)
    torch.testing.assert_close(maps["temporal"].sum(dim=-1), torch.ones(6))
    saliency = maps["temporal_saliency"]
    assert saliency.shape == (6, GRID, GRID)
    assert ((saliency >= 0) & (saliency <= 1)).all()


@pytest.mark.parametrize("variant,adaptations", list(SPACE_ONLY.items()))
def test_space_only_models_have_no_temporal_maps(variant, adaptations):
    maps = cls_attention_maps(trained(variant, adaptations), clips(1))
    assert maps["temporal"] is None and maps["temporal_saliency"] is None


def test_aim_spatial_map_is_taken_after_the_temporal_branch_is_added():
    """Recompute eq. (3) then S-MSA by hand from the last block's input: the maps must agree."""
    model = trained("aim", TEMPORAL["aim"])
    block, seen = model.blocks[-1], {}
    handle = block.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    maps = cls_attention_maps(model, one_clip())
    handle.remove()
    x, t = seen["x"], 4
    with torch.no_grad():
        xt = block.ln_1(rearrange(x, "(b t) n d -> (b n) t d", t=t))
        temporal = block.attn.attention_probs(xt).mean(dim=1)
        x = x + rearrange(block.t_adapter(block.attn(xt)), "(b n) t d -> (b t) n d", n=x.shape[1])
        cls = block.attn.attention_probs(block.ln_1(x)).mean(dim=1)[:, 0, 1:]
    expected = (cls / cls.sum(-1, keepdim=True)).view(4, GRID, GRID)
    torch.testing.assert_close(maps["spatial"], expected)
    torch.testing.assert_close(maps["temporal"], temporal[0])
    torch.testing.assert_close(maps["temporal_saliency"].flatten(1),
                               1 - temporal[1:].diagonal(dim1=-2, dim2=-1).T)


def test_reading_the_maps_leaves_the_model_as_it_was():
    model = trained("aim", TEMPORAL["aim"]).train()
    x = one_clip()
    maps = cls_attention_maps(model, x)
    assert model.training
    assert not any(m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(maps["logits"], model.eval()(x)[0])


def test_a_batch_of_clips_is_refused():
    with pytest.raises(ValueError, match=r"\(1, C, T, H, W\)"):
        cls_attention_maps(trained("aim", TEMPORAL["aim"]), clips(2))


# ----------------------------------------------------------------------------------------------
# aim-video explain, end to end
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A real H.264 file: an object moving left to right, 30 frames of 48x40."""
    path = tmp_path_factory.mktemp("explain") / "move.mp4"
    write_mp4(path, render_video("move_left_to_right", 0, 0, (48, 40), 30), fps=15)
    return path


def checkpoint(folder: Path, variant: str, adaptations: list[str], frames: int) -> Path:
    model = trained(variant, adaptations, frames)
    cfg = Config(model=model.cfg, data=DataConfig(short_side=32, sampler="uniform", test_clips=1,
                                                   test_crops=3))
    return save_model(folder, model, cfg.validate(), class_names=list("abcde"))


def test_explain_compares_frozen_space_only_with_aim_as_png_and_gif(tmp_path, video, capsys):
    aim = checkpoint(tmp_path / "aim", "aim", TEMPORAL["aim"], frames=6)
    frozen = checkpoint(tmp_path / "frozen", "frozen_space_only", ["spatial"], frames=4)
    out = tmp_path / "out"
    assert main(["explain", str(video), "--model", str(frozen), "--compare", str(aim),
                 "--out", str(out)]) == 0
    png, gif = out / "move_attention.png", out / "move_attention.gif"
    assert f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height  # frames run along the rows
    with Image.open(gif) as image:
        assert image.format == "GIF"
        assert image.n_frames == 6          # the longer model's frame count
        assert image.width > 2 * image.height * 0.8  # two models side by side


def test_frames_span_the_video_unless_the_config_sampler_is_asked_for():
    cfg = Config(model=tiny_cfg(), data=DataConfig(sampler="dense", frame_interval=2,
                                                   test_clips=3))
    # The uniform sampler's test view: segments of 39 / 4 frames, [0,10] [10,20] [20,29] [29,39].
    assert frame_indices(cfg, 40, from_config=False) == [5, 15, 24, 34]
    assert frame_indices(cfg, 40, from_config=True) == [5, 7, 9, 11]  # first of 3 dense views


def test_explain_of_one_model_gifs_its_frames_and_follows_the_config_sampler(tmp_path, video):
    aim = checkpoint(tmp_path / "aim", "aim", TEMPORAL["aim"], frames=4)
    result = run_explain(video, str(aim), out_dir=tmp_path / "out", frames_from_config=True)
    with Image.open(result["gif"]) as image:
        assert image.n_frames == 4
    assert list(result["predictions"].values())[0].split(" (")[0] in "abcde"
    assert result["logged_to_runs"] == []


@pytest.fixture
def isolated_mlflow(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_pictures_of_a_model_from_mlflow_are_logged_to_its_run(tmp_path, video, isolated_mlflow):
    aim = checkpoint(tmp_path / "aim", "aim", TEMPORAL["aim"], frames=4)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("explain", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifact(str(aim), "ckpt")
    result = run_explain(video, f"runs:/{run.info.run_id}/ckpt/model.pt", out_dir=tmp_path / "out")
    assert result["logged_to_runs"] == [run.info.run_id]
    logged = {Path(a.path).name for a in MlflowClient().list_artifacts(run.info.run_id, "explain")}
    assert logged == {"move_attention.png", "move_attention.gif"}
