"""Build the frozen image ViT: geometry from open_clip / timm / our tiny preset, weights from a tag,
a local file, or nowhere (random, said loudly).

Every source is converted into the one parameter layout of :mod:`aim_core.vit` by a filter function
(timm's ``checkpoint_filter_fn`` idea), so the video model has a single implementation.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import BackboneConfig, ConfigError, ModelConfig
from .storage import file_sha256
from .vit import ViTSpec

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """A backbone name, weights file or architecture that cannot be used, and why."""


@dataclass(frozen=True)
class BackboneIdentity:
    """What a checkpoint must be paired with: a tag, or the hash of a local weights file."""

    source: str
    name: str
    pretrained: str | None
    sha256: str | None
    random_init: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------

def resolve_spec(cfg: BackboneConfig) -> ViTSpec:
    """The backbone's geometry, without building or downloading anything."""
    if cfg.source == "tiny":
        act = "gelu" if cfg.act == "auto" else cfg.act
        return ViTSpec(width=cfg.width, layers=cfg.layers, heads=cfg.heads,
                       patch_size=cfg.patch_size, image_size=32, act=act)
    if cfg.source == "open_clip":
        return _open_clip_spec(cfg)
    if cfg.source == "timm":
        return _timm_spec(cfg)
    raise ConfigError(f"model.backbone.source: expected one of open_clip, timm, tiny, got {cfg.source!r}")


def _open_clip_spec(cfg: BackboneConfig) -> ViTSpec:
    import open_clip

    model_cfg = open_clip.get_model_config(cfg.name)
    if model_cfg is None:
        vits = [n for n in open_clip.list_models() if n.startswith("ViT")]
        raise ConfigError(f"model.backbone.name: unknown open_clip model {cfg.name!r}; "
                          f"ViT models include {vits[:12]} ...")
    v = model_cfg["vision_cfg"]
    if v.get("timm_model_name") or isinstance(v.get("layers"), (list, tuple)):
        raise BackboneError(f"open_clip model {cfg.name!r} is not a plain ViT (AIM needs one)")
    unsupported = [k for k in ("ls_init_value", "attentional_pool", "no_ln_pre", "final_ln_after_pool")
                   if v.get(k)]
    if unsupported or v.get("pool_type", "tok") != "tok":
        raise BackboneError(f"open_clip model {cfg.name!r} uses {unsupported or v.get('pool_type')}, "
                            f"which this ViT layout does not implement")
    quick = bool(model_cfg.get("quick_gelu")) or cfg.pretrained == "openai"
    act = cfg.act if cfg.act != "auto" else ("quick_gelu" if quick else "gelu")
    width = v["width"]
    return ViTSpec(width=width, layers=v["layers"], heads=width // v.get("head_width", 64),
                   patch_size=v["patch_size"], image_size=v["image_size"],
                   mlp_ratio=v.get("mlp_ratio", 4.0), act=act)


def _timm_spec(cfg: BackboneConfig) -> ViTSpec:
    import timm
    from timm.models.vision_transformer import VisionTransformer

    try:
        with torch.device("meta"):
            model = timm.create_model(cfg.name, pretrained=False, num_classes=0)
    except RuntimeError as exc:
        raise ConfigError(f"model.backbone.name: unknown timm model {cfg.name!r} ({exc})") from exc
    if not isinstance(model, VisionTransformer):
        raise BackboneError(f"timm model {cfg.name!r} is a {type(model).__name__}, not a plain ViT")
    blk = model.blocks[0]
    if (model.cls_token is None or getattr(model, "num_reg_tokens", 0)
            or not isinstance(blk.ls1, torch.nn.Identity)
            or not isinstance(blk.attn.q_norm, torch.nn.Identity)
            or model.global_pool not in ("token", "")):
        raise BackboneError(f"timm model {cfg.name!r} uses a CLS-free, register, layer-scale or "
                            f"qk-norm design, which this ViT layout does not implement")
    act = cfg.act if cfg.act != "auto" else (
        "quick_gelu" if "QuickGELU" in type(blk.mlp.act).__name__ else "gelu")
    return ViTSpec(width=model.embed_dim, layers=len(model.blocks), heads=blk.attn.num_heads,
                   patch_size=model.patch_embed.patch_size[0], image_size=model.patch_embed.img_size[0],
                   mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim, act=act,
                   ln_eps=blk.norm1.eps, patch_bias=model.patch_embed.proj.bias is not None,
                   pre_norm=not isinstance(model.norm_pre, torch.nn.Identity))


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

def load_backbone_weights(cfg: BackboneConfig) -> tuple[dict[str, torch.Tensor] | None, BackboneIdentity]:
    """Frozen weights in our layout (``None`` means random init), plus their identity."""
    if cfg.pretrained is None:
        log.warning("*** model.backbone.pretrained is null: the %s backbone %r is RANDOMLY "
                    "INITIALISED. AIM adapts a pre-trained image model; expect chance-level "
                    "results unless this is a test. ***", cfg.source, cfg.name)
        return None, declared_identity(cfg)
    path = Path(os.path.expanduser(cfg.pretrained))
    if path.is_file():
        state = convert_to_vit_layout(read_weights_file(path))
        identity = BackboneIdentity(cfg.source, cfg.name, str(path), file_sha256(path), False)
        log.info("backbone %s weights from local file %s (sha256 %s)", cfg.name, path,
                 identity.sha256[:12])
        return state, identity
    if "/" in cfg.pretrained or cfg.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise BackboneError(f"model.backbone.pretrained: weights file not found: {path}")
    state = _download_by_tag(cfg)
    return convert_to_vit_layout(state), BackboneIdentity(cfg.source, cfg.name, cfg.pretrained,
                                                          None, False)


def _download_by_tag(cfg: BackboneConfig) -> dict[str, torch.Tensor]:
    if cfg.source == "open_clip":
        import open_clip

        tags = [t for n, t in open_clip.list_pretrained() if n == cfg.name]
        if cfg.pretrained not in tags:
            raise ConfigError(f"model.backbone.pretrained: open_clip has no tag {cfg.pretrained!r} "
                              f"for {cfg.name}; known tags: {tags}, or give a local file path")
        model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained)
        return {f"visual.{k}": v for k, v in model.visual.state_dict().items()}
    if cfg.source == "timm":
        import timm

        name = cfg.name if "." in cfg.name else f"{cfg.name}.{cfg.pretrained}"
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    raise ConfigError(f"model.backbone.pretrained: the tiny backbone has no published tags; "
                      f"give a local file path or null, got {cfg.pretrained!r}")


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file, loaded with ``weights_only``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("constants.pkl") for n in zf.namelist()):
                raise BackboneError(
                    f"{path} is a TorchScript archive (OpenAI's released CLIP .pt format), which "
                    f"cannot be loaded safely with weights_only. Convert it once: "
                    f"python -m aim_core.backbones convert-openai {path} {path.with_suffix('.pth')}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise BackboneError(f"cannot read weights from {path} with weights_only=True: {exc}") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def convert_openai_checkpoint(src: str | Path, dst: str | Path) -> None:
    """One explicit, trusted step: TorchScript CLIP archive to a plain state dict file."""
    model = torch.jit.load(str(src), map_location="cpu")
    torch.save({k: v.float() for k, v in model.state_dict().items()}, str(dst))


# ----------------------------------------------------------------------------------------------
# Layout conversion (open_clip / OpenAI CLIP / timm -> aim_core.vit)
# ----------------------------------------------------------------------------------------------

def convert_to_vit_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a foreign image-model state dict onto our frozen-ViT keys.

    Recognises the CLIP layout (full model with ``visual.`` prefix, or the vision tower alone) and
    timm's ViT layout; text towers, projections and classifier heads are dropped.
    """
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" in state:
        return _from_clip(state)
    if "patch_embed.proj.weight" in state:
        return _from_timm(state)
    if "patch_embed.conv1.weight" in state:  # already ours
        return {k: v for k, v in state.items() if not k.startswith("head.")}
    raise BackboneError("weights are neither CLIP/open_clip nor timm ViT layout "
                        f"(first keys: {list(state)[:5]})")


def _from_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {
        "patch_embed.conv1.weight": state["conv1.weight"],
        "patch_embed.class_embedding": state["class_embedding"],
        "patch_embed.positional_embedding": state["positional_embedding"],
        "ln_post.weight": state["ln_post.weight"],
        "ln_post.bias": state["ln_post.bias"],
    }
    if "ln_pre.weight" in state:
        out["ln_pre.weight"], out["ln_pre.bias"] = state["ln_pre.weight"], state["ln_pre.bias"]
    prefix = "transformer.resblocks."
    for key, value in state.items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if rest.startswith(("ls_1", "ls_2")):
                raise BackboneError("CLIP weights with layer scale are not supported")
            out[f"blocks.{index}.{rest}"] = value
    return out


def to_clip_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our frozen-ViT keys back to CLIP's vision-tower names (the inverse of ``_from_clip``)."""
    out = {}
    for key, value in state.items():
        if key.startswith("patch_embed."):
            out[key[len("patch_embed."):]] = value
        elif key.startswith("blocks."):
            out["transformer.resblocks." + key[len("blocks."):]] = value
        elif key.startswith(("ln_pre.", "ln_post.")):
            out[key] = value
    return out


def _from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rename = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
              "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj",
              "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    out = {
        "patch_embed.conv1.weight": state["patch_embed.proj.weight"],
        "patch_embed.class_embedding": state["cls_token"].reshape(-1),
        "patch_embed.positional_embedding": state["pos_embed"].reshape(-1, state["pos_embed"].shape[-1]),
        "ln_post.weight": state["norm.weight"],
        "ln_post.bias": state["norm.bias"],
    }
    if "patch_embed.proj.bias" in state:
        out["patch_embed.conv1.bias"] = state["patch_embed.proj.bias"]
    if "norm_pre.weight" in state:
        out["ln_pre.weight"], out["ln_pre.bias"] = state["norm_pre.weight"], state["norm_pre.bias"]
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for old, new in rename.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"blocks.{index}.{rest}"] = value
    return out


def fit_positional_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Resample a ``(1 + g*g, D)`` positional embedding to another grid (other input size)."""
    old = int(math.isqrt(pos.shape[0] - 1))
    if old == grid:
        return pos
    from timm.layers import resample_abs_pos_embed

    log.info("resampling positional embedding from %dx%d to %dx%d", old, old, grid, grid)
    return resample_abs_pos_embed(pos[None], (grid, grid), num_prefix_tokens=1)[0]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def build_model(cfg: ModelConfig, *, device: str | torch.device | None = None,
                load_weights: bool = True, identity: BackboneIdentity | None = None):
    """The video classifier with the frozen backbone's weights in place.

    ``device='meta'`` builds shapes only (parameter and FLOP counting of ViT-L/14 costs no memory);
    weights are then not loaded, nor with ``load_weights=False``. ``identity`` describes the
    backbone as a checkpoint recorded it (else: as loaded, or as the config declares it).
    """
    from .model import VideoClassifier, compile_model

    spec = resolve_spec(cfg.backbone)
    if str(device) == "meta":
        with torch.device("meta"):
            return VideoClassifier(cfg, spec, identity or declared_identity(cfg.backbone))
    if load_weights:
        state, loaded = load_backbone_weights(cfg.backbone)
    else:
        state, loaded = None, declared_identity(cfg.backbone)
    model = VideoClassifier(cfg, spec, identity or loaded)
    if state is not None:
        load_frozen_weights(model, state)
    if device is not None:
        model = model.to(device)
    # model.compile: here, so training, evaluation, prediction and serving all run it compiled
    return compile_model(model) if cfg.compile else model


def declared_identity(cfg: BackboneConfig) -> BackboneIdentity:
    """The backbone's identity as the config names it, without reading its weights."""
    return BackboneIdentity(cfg.source, cfg.name, cfg.pretrained, None, cfg.pretrained is None)


_IMAGE_MODEL_KEY = re.compile(r"^(patch_embed\.|ln_pre\.|ln_post\.|blocks\.\d+\.(ln_1|ln_2|attn|mlp)\.)")


def load_frozen_weights(model, state: dict[str, torch.Tensor]) -> None:
    """Copy image-model weights into the video model; adapters and head keep their init."""
    state = dict(state)
    key = "patch_embed.positional_embedding"
    state[key] = fit_positional_embedding(state[key], model.cfg.image_size // model.spec.patch_size)
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise BackboneError(f"backbone weights do not fit the {model.spec} layout: unexpected "
                            f"{unexpected[:5]}")
    mismatched = [k for k, v in state.items() if own[k].shape != v.shape]
    if mismatched:
        k = mismatched[0]
        raise BackboneError(f"backbone weight {k} has shape {tuple(state[k].shape)}, the model "
                            f"expects {tuple(own[k].shape)}: wrong model name for these weights?")
    missing = [k for k in own if _IMAGE_MODEL_KEY.match(k) and k not in state]
    if missing:
        raise BackboneError(f"backbone weights lack {missing[:5]}")
    model.load_state_dict(state, strict=False)
    for block in model.blocks:
        if hasattr(block, "init_temporal_from_spatial"):
            block.init_temporal_from_spatial()


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aim_core.backbones")
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert-openai", help="TorchScript CLIP .pt -> plain state dict")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(argv)
    convert_openai_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    _main()
