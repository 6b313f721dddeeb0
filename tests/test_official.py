"""Released AIM checkpoints as they are really saved: mmcv's ``meta`` with numpy scalars, both
backbone layouts (CLIP and ImageNet-21K), the adapter scale of each released config; nothing but
weights and plain values is ever unpickled."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from aim_core.checkpoint import ModelFileError
from aim_core.official import load_official_checkpoint, official_model_config, read_official_state

from .modeltools import FRAMES, clips
from .official_imagenet_reference import OfficialImageNetAIM
from .official_reference import OfficialAIM


def trained(model: torch.nn.Module) -> torch.nn.Module:
    """Released weights are trained: no zero adapters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def mmaction_checkpoint(model: torch.nn.Module, **meta) -> dict:
    """What mmcv's ``EpochBasedRunner.save_checkpoint`` writes for an mmaction2 run with
    ``EvalHook(save_best='auto')``: the meta of ``tools/train.py`` and of the runner, EvalHook's
    ``hook_msgs`` (``best_score`` is top-1 accuracy as numpy computes it: a float64), mmcv's
    version and time, then the weights and the optimizer state."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    model(clips()).sum().backward()
    optimizer.step()
    hits = np.array([True, True, False, True])
    return {
        "meta": {"env_info": "sys.platform: linux\nPython: 3.8.13\nPyTorch: 1.10.0",
                 "seed": 0, "config_name": "vitclip_base_k400.py", "work_dir": "k400",
                 "hook_msgs": {"last_ckpt": "work_dirs/k400/epoch_30.pth",
                               "best_score": hits.sum() / hits.shape[0],
                               "best_ckpt": "work_dirs/k400/best_top1_acc_epoch_30.pth"},
                 "epoch": 30, "iter": 37500, "mmaction_version": "0.24.1+b3580d2",
                 "config": "model = dict(type='Recognizer3D', ...)\n", "mmcv_version": "1.4.0",
                 "time": "Tue Aug  2 10:04:31 2022", **meta},
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }


def as_written_by_numpy1(path: Path) -> None:
    """Rewrite a ``torch.save`` file the way numpy 1.x pickles a scalar
    (``numpy.core.multiarray.scalar``), as the released files of 2022 were written."""
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info, data in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar",
                                    b"numpy.core.multiarray\nscalar")
            dst.writestr(info, data)


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_an_mmcv_checkpoint_with_a_numpy_best_score_loads_and_gives_the_official_logits(
        tmp_path, numpy_major):
    reference = trained(OfficialAIM(size=32, frames=FRAMES, patch=8, d=128, layers=2, classes=7))
    ckpt = mmaction_checkpoint(reference)
    assert type(ckpt["meta"]["hook_msgs"]["best_score"]) is np.float64
    path = tmp_path / "best_top1_acc_epoch_30.pth"
    torch.save(ckpt, path)
    if numpy_major == 1:
        as_written_by_numpy1(path)

    model = load_official_checkpoint(path)

    with torch.no_grad():
        torch.testing.assert_close(model(clips()), reference(clips()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_tadapter", [1, 2])
def test_an_imagenet21k_checkpoint_loads_and_gives_the_official_logits(tmp_path, num_tadapter):
    reference = trained(OfficialImageNetAIM(size=32, frames=FRAMES, patch=8, d=128, depth=2,
                                            classes=7, scale=1.0 if num_tadapter == 2 else 0.5,
                                            num_tadapter=num_tadapter))
    path = tmp_path / "vit_imagenet.pth"
    torch.save(mmaction_checkpoint(reference, config_name="vit_imagenet_k400.py"), path)

    model = load_official_checkpoint(path)

    assert (model.spec.act, model.spec.ln_eps, model.spec.patch_bias, model.spec.pre_norm) == (
        "gelu", 1e-6, True, False)
    assert model.cfg.adapter.temporal_adapters == num_tadapter
    assert (model.cfg.num_classes, model.cfg.num_frames, model.cfg.image_size) == (7, FRAMES, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clips()), reference(clips()), atol=1e-4, rtol=1e-4)


class Payload:
    """Unpickling this would create ``path``: the check that nothing ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("extra", ["code", "float32", "array", "object"])
def test_a_checkpoint_holding_any_other_global_is_refused(tmp_path, extra):
    marker = tmp_path / "ran"
    value = {"code": Payload(marker), "float32": np.float32(0.5), "array": np.zeros(3),
             "object": Path("work_dirs")}[extra]
    reference = OfficialAIM(frames=FRAMES)
    path = tmp_path / "aim.pth"
    torch.save(mmaction_checkpoint(reference, extra=value), path)

    with pytest.raises(ModelFileError, match=r"aim\.pth: refused to unpickle .*weights_only"):
        read_official_state(path)
    assert not marker.exists()


def meta_state(cls, **shape) -> dict[str, torch.Tensor]:
    """A released model's state dict with the real shapes and no memory (meta tensors)."""
    with torch.device("meta"):
        return cls(**shape).state_dict()


B16, L14 = dict(size=224, patch=16, d=768), dict(size=224, patch=14, d=1024)


# The released configs (configs/recognition/vit/ of taoyang1122/adapt-image-models): backbone
# geometry, frames, temporal adapters, classes and the adapter_scale each one trains with.
@pytest.mark.parametrize("name, cls, shape, scale", [
    ("vitclip_base_k400", OfficialAIM, dict(B16, layers=12, frames=32, classes=400), 0.5),
    ("vitclip_base_k700", OfficialAIM, dict(B16, layers=12, frames=8, classes=700), 0.5),
    ("vitclip_base_diving48", OfficialAIM, dict(B16, layers=12, frames=32, classes=48), 0.5),
    ("vitclip_base_sthv2", OfficialAIM, dict(B16, layers=12, frames=8, classes=174,
                                             num_tadapter=2), 1.0),
    ("vitclip_large_k400", OfficialAIM, dict(L14, layers=24, frames=32, classes=400), 0.5),
    ("vitclip_large_k700", OfficialAIM, dict(L14, layers=24, frames=32, classes=700), 0.5),
    ("vitclip_large_diving48", OfficialAIM, dict(L14, layers=24, frames=32, classes=48), 0.5),
    ("vitclip_large_sthv2", OfficialAIM, dict(L14, layers=24, frames=8, classes=174), 1.0),
    ("vit_imagenet_k400", OfficialImageNetAIM, dict(B16, depth=12, frames=8, classes=400), 0.5),
    ("vit_imagenet_ssv2", OfficialImageNetAIM, dict(B16, depth=12, frames=8, classes=174,
                                                    num_tadapter=2), 1.0),
])
def test_the_adapter_scale_is_the_one_of_the_released_config(name, cls, shape, scale):
    state = meta_state(cls, **shape)
    cfg = official_model_config(state)
    assert cfg.adapter.scale == scale
    assert cfg.adapter.temporal_adapters == shape.get("num_tadapter", 1)
    assert (cfg.num_classes, cfg.num_frames, cfg.image_size) == (shape["classes"],
                                                                  shape["frames"], 224)
    assert official_model_config(state, scale=0.25).adapter.scale == 0.25


def test_a_file_that_is_not_an_official_checkpoint_is_a_model_file_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(ModelFileError, match="not an official AIM checkpoint"):
        load_official_checkpoint(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="other.pth"):
        load_official_checkpoint(path)
