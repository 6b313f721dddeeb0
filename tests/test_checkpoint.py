"""Model checkpoints are small, reload to identical logits, and refuse the wrong backbone."""

from __future__ import annotations

import pytest
import torch

from aim_core.backbones import BackboneError, build_model
from aim_core.checkpoint import ModelFileError, load_model, read_model_file, save_model
from aim_core.config import Config

from .modeltools import clips, perturb_adapters, tiny_cfg


def trained(weights=None):
    cfg = Config(model=tiny_cfg(weights=weights))
    model = build_model(cfg.model).eval()
    perturb_adapters(model)
    return cfg, model


def test_checkpoint_keeps_only_trained_weights_and_reloads_identically(tmp_path, clip_tower):
    _, backbone = clip_tower
    cfg, model = trained(backbone)
    path = save_model(tmp_path / "ckpt", model, cfg, class_names=list("abcde"))
    stored = read_model_file(path)["state_dict"]
    assert set(stored) == set(model.tunable_state_dict())
    reloaded, cfg2, names = load_model(path)
    assert cfg2 == cfg and names == list("abcde")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clips()), model(clips()), atol=0, rtol=0)


def test_random_backbone_is_stored_whole(tmp_path):
    cfg, model = trained(None)
    path = save_model(tmp_path / "m.pt", model, cfg)
    assert set(read_model_file(path)["state_dict"]) == set(model.state_dict())
    reloaded, _, _ = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clips()), model(clips()), atol=0, rtol=0)


def test_wrong_backbone_file_is_refused(tmp_path, clip_tower):
    _, backbone = clip_tower
    cfg, model = trained(backbone)
    path = save_model(tmp_path / "ckpt", model, cfg)
    impostor = tmp_path / "other.pt"
    state = torch.load(backbone, weights_only=True)
    state["state_dict"]["visual.ln_post.bias"] = state["state_dict"]["visual.ln_post.bias"] + 1
    torch.save(state, impostor)
    with pytest.raises(BackboneError, match="wrong backbone weights"):
        load_model(path, backbone_file=impostor)


def test_files_that_hold_no_usable_model_are_model_file_errors(tmp_path):
    cfg, model = trained(None)
    path = save_model(tmp_path / "m.pt", model, cfg)
    payload = torch.load(path, weights_only=True)

    torch.save({"state_dict": payload["state_dict"]}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match=r"other\.pt is not an aim-video checkpoint"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"junk\.pt: not readable with weights_only=True"):
        load_model(tmp_path / "junk.pt")
    key = "head.weight"
    payload["state_dict"][key] = torch.zeros(3, payload["state_dict"][key].shape[1])
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match=r"bad\.pt: weights do not fit .*head\.weight"):
        load_model(tmp_path / "bad.pt")


def test_a_model_file_holding_code_is_refused_and_nothing_runs(tmp_path):
    class Payload:
        def __reduce__(self):
            return open, (str(tmp_path / "ran"), "w")

    cfg, model = trained(None)
    path = save_model(tmp_path / "m.pt", model, cfg, extra={"note": Payload()})
    with pytest.raises(ModelFileError, match=r"GLOBAL [a-z]+\.open was not an allowed global"):
        load_model(path)
    assert not (tmp_path / "ran").exists()
