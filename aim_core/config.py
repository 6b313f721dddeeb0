"""Typed, validated configuration.

One :class:`Config` object travels from the YAML file through every stage, so a run is fully
described by the file plus its ``--set`` overrides. Validation happens at load time and every error
names the offending field by its dotted path and says what is allowed, because a typo found after an
hour of decoding is an hour lost.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range. The message names the field."""


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------

BACKBONE_SOURCES = ("open_clip", "timm", "tiny")
VARIANTS = ("aim", "frozen_space_only", "finetuned_space_only", "timesformer")
ADAPTATIONS = ("spatial", "temporal", "joint")


@dataclass
class BackboneConfig:
    """Which frozen image ViT to start from and where its weights come from.

    ``pretrained`` is a tag known to open_clip/timm (downloads when online), a path to a local weights
    file, or ``None`` for random initialisation (logged loudly and recorded, never silent).
    """

    source: Literal["open_clip", "timm", "tiny"] = "open_clip"
    name: str = "ViT-B-16"
    pretrained: str | None = None
    # MLP activation of the frozen blocks. OpenAI's CLIP weights need QuickGELU; `auto` takes it from
    # the open_clip model config (the `-quickgelu` names) or the `openai` tag.
    act: Literal["auto", "gelu", "quick_gelu"] = "auto"
    # Geometry of the `tiny` source (ignored by open_clip/timm, whose names fix it).
    width: int = 64
    layers: int = 3
    heads: int = 4
    patch_size: int = 8

    def validate(self, path: str) -> None:
        _check(self.width > 0 and self.width % self.heads == 0, f"{path}.width",
               f"a positive multiple of heads ({self.heads})", self.width)
        _check(self.layers > 0, f"{path}.layers", "a positive integer", self.layers)
        _check(self.patch_size > 0, f"{path}.patch_size", "a positive integer", self.patch_size)


@dataclass
class AdapterConfig:
    """The AIM adapters: where they go, how wide they are, and which adaptations are on."""

    ratio: float = 0.25
    scale: float = 0.5
    # all | top:K | bottom:K | every:N | an explicit list of block indices
    placement: str | list[int] = "all"
    adaptations: list[str] = field(default_factory=lambda: list(ADAPTATIONS))
    temporal_adapters: int = 1

    def validate(self, path: str) -> None:
        _check(0 < self.ratio <= 4, f"{path}.ratio", "a number in (0, 4]", self.ratio)
        _check(self.scale >= 0, f"{path}.scale", "a non-negative number", self.scale)
        _check(self.temporal_adapters in (1, 2), f"{path}.temporal_adapters", "1 or 2",
               self.temporal_adapters)
        bad = [a for a in self.adaptations if a not in ADAPTATIONS]
        _check(not bad, f"{path}.adaptations", f"a subset of {list(ADAPTATIONS)}", self.adaptations)
        parse_placement(self.placement, num_blocks=None, path=f"{path}.placement")


@dataclass
class ModelConfig:
    """The video classifier. ``variant`` picks a row of the paper's Table 1.

    - ``aim``: frozen backbone plus the adaptations listed in ``adapter.adaptations``
      (``[spatial]``, ``[spatial, temporal]``, ``[spatial, temporal, joint]`` = AIM);
    - ``frozen_space_only``: linear probe, only the head trains;
    - ``finetuned_space_only``: every weight trains, frames averaged, no temporal modelling;
    - ``timesformer``: divided space-time attention with a new temporal attention per block,
      initialised from the spatial one; every weight trains.
    """

    variant: Literal["aim", "frozen_space_only", "finetuned_space_only", "timesformer"] = "aim"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    num_classes: int = 400
    num_frames: int = 8
    image_size: int = 224
    drop_path: float = 0.2
    head_dropout: float = 0.5
    # Train the temporal embedding (the official recipe does); freezing it lets the blocks below the
    # first adapted one run without autograd.
    train_temporal_embedding: bool = True
    # Activation checkpointing: false, true (every block that carries gradients) or the number of
    # such blocks to checkpoint, counted from the first one (trades compute for memory).
    grad_checkpointing: bool | int = False
    # torch.compile the blocks (aim_core.model.compile_model) for training and inference. Off by
    # default: measured on ViT-B/16 AIM (batch 2x8x224^2, fp32, one CPU core), the first step took
    # 76 s to compile (again for eval and for each precision) and later steps saved 2% of the
    # eager step's CPU time (`benchmarks/train_step.py --against-official --compile`), so it
    # only pays in long runs; GPU figures are not measured yet.
    compile: bool = False

    def validate(self, path: str) -> None:
        _check(self.num_classes > 0, f"{path}.num_classes", "a positive integer", self.num_classes)
        _check(self.num_frames > 0, f"{path}.num_frames", "a positive integer", self.num_frames)
        _check(self.image_size > 0, f"{path}.image_size", "a positive integer", self.image_size)
        _check(0 <= self.drop_path < 1, f"{path}.drop_path", "a number in [0, 1)", self.drop_path)
        _check(isinstance(self.grad_checkpointing, bool) or self.grad_checkpointing >= 0,
               f"{path}.grad_checkpointing", "true, false or a number of blocks >= 0",
               self.grad_checkpointing)
        _check(0 <= self.head_dropout < 1, f"{path}.head_dropout", "a number in [0, 1)",
               self.head_dropout)


DATASET_FORMATS = ("folder", "kinetics_csv", "list", "ssv2_json")
SAMPLERS = ("dense", "uniform")


@dataclass
class DataConfig:
    """Where the videos are, how they are labelled, and how clips are drawn from them."""

    root: str = "demo_data/videos"
    format: Literal["folder", "kinetics_csv", "list", "ssv2_json"] = "folder"
    # Annotation files by split (format-dependent: CSV, list file, SSv2 JSON); empty for `folder`.
    train_annotations: str | None = None
    val_annotations: str | None = None
    labels_file: str | None = None          # SSv2 labels.json
    val_fraction: float = 0.2               # held-out share when the annotations have no val split
    train_fraction: float = 1.0             # nested, stratified subset for data-efficiency studies
    seed: int = 0
    sampler: Literal["dense", "uniform"] = "dense"
    frame_interval: int = 16                # dense sampler: clip_len x interval
    test_clips: int = 3                     # temporal views at test time
    test_crops: int = 1                     # spatial views at test time (1 centre or 3 crops)
    short_side: int = 256                   # resize at decode time
    # Random-resized-crop area range in training; the released configs use (0.08, 1).
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    horizontal_flip: bool = True            # never for direction-dependent classes
    rand_augment: str | None = None         # timm string, e.g. "rand-m7-n4-mstd0.5-inc1"
    random_erasing: float = 0.0
    label_smoothing: float = 0.0
    # Ray Data
    mode: Literal["stream", "parquet"] = "stream"
    shards_dir: str | None = None           # materialised Parquet shards (mode=parquet)
    videos_per_task: int = 8
    decode_threads: int = 1

    def validate(self, path: str) -> None:
        _check(0 < self.val_fraction < 1, f"{path}.val_fraction", "a number in (0, 1)",
               self.val_fraction)
        _check(0 < self.train_fraction <= 1, f"{path}.train_fraction", "a number in (0, 1]",
               self.train_fraction)
        _check(self.frame_interval > 0, f"{path}.frame_interval", "a positive integer",
               self.frame_interval)
        _check(self.test_clips > 0, f"{path}.test_clips", "a positive integer", self.test_clips)
        _check(self.test_crops in (1, 3), f"{path}.test_crops", "1 or 3", self.test_crops)
        _check(self.short_side > 0, f"{path}.short_side", "a positive integer", self.short_side)
        _check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
               f"{path}.crop_scale", "[low, high] with 0 < low <= high <= 1", self.crop_scale)
        _check(0 <= self.random_erasing <= 1, f"{path}.random_erasing", "a probability in [0, 1]",
               self.random_erasing)
        _check(0 <= self.label_smoothing < 1, f"{path}.label_smoothing", "a number in [0, 1)",
               self.label_smoothing)
        _check(self.videos_per_task > 0, f"{path}.videos_per_task", "a positive integer",
               self.videos_per_task)


@dataclass
class OptimConfig:
    """The published recipe by default: AdamW 3e-4, wd 0.05, batch 64, 30 epochs, 3 warm-up."""

    epochs: int = 30
    batch_size: int = 64                    # effective batch, reached with gradient accumulation
    per_device_batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 3.0
    schedule: Literal["cosine_epoch", "cosine_step"] = "cosine_epoch"
    min_lr: float = 0.0
    grad_clip: float | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int = 1

    def validate(self, path: str) -> None:
        _check(self.epochs > 0, f"{path}.epochs", "a positive integer", self.epochs)
        _check(self.batch_size > 0, f"{path}.batch_size", "a positive integer", self.batch_size)
        _check(self.per_device_batch > 0, f"{path}.per_device_batch", "a positive integer",
               self.per_device_batch)
        _check(self.lr > 0, f"{path}.lr", "a positive number", self.lr)
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "a non-negative number",
               self.weight_decay)
        _check(0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
               f"{path}.warmup_epochs", f"a number in [0, epochs={self.epochs})", self.warmup_epochs)
        _check(self.grad_clip is None or self.grad_clip > 0, f"{path}.grad_clip",
               "null or a positive number", self.grad_clip)
        _check(self.eval_every > 0, f"{path}.eval_every", "a positive integer", self.eval_every)


@dataclass
class RunConfig:
    """Where results go and what resources each stage asks Ray for."""

    name: str = "aim-run"
    storage_path: str = "aim_runs"          # local folder, s3://, gs:// or an NFS mount
    num_workers: int = 1
    use_gpu: bool | None = None             # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    ingest_cpus: float = 1.0                # per decode task; keeps decoding on CPU nodes
    max_failures: int = 3
    mlflow_experiment: str = "aim-video"
    tracking_uri: str | None = None         # None: $MLFLOW_TRACKING_URI or the local sqlite store
    register_as: str | None = None

    def validate(self, path: str) -> None:
        _check(self.num_workers > 0, f"{path}.num_workers", "a positive integer", self.num_workers)
        _check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "a positive number",
               self.cpus_per_worker)
        _check(self.ingest_cpus > 0, f"{path}.ingest_cpus", "a positive number", self.ingest_cpus)
        _check(self.max_failures >= 0, f"{path}.max_failures", "a non-negative integer",
               self.max_failures)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> "Config":
        _validate_tree(self, "")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Config":
        return _build(cls, data or {}, "").validate()

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "Config":
        """Read a YAML file, apply ``key.path=value`` overrides, validate."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = _read_with_bases(path, seen=())
        for item in overrides or []:
            apply_override(data, item)
        return cls.from_dict(data)


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """YAML with optional ``_base_`` file(s) (relative to the file), merged section-wise in order."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"{[f.name for f in dataclasses.fields(Config)]}")
    bases = data.pop("_base_", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, _read_with_bases(path.parent / base, seen + (path.resolve(),)))
    return _merge(merged, data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (_merge(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


# ----------------------------------------------------------------------------------------------
# Placement
# ----------------------------------------------------------------------------------------------

def parse_placement(placement: str | list[int], num_blocks: int | None,
                    path: str = "model.adapter.placement") -> list[int] | None:
    """Block indices that get adapters. ``num_blocks=None`` only checks the syntax."""
    allowed = "'all', 'top:K', 'bottom:K', 'every:N' or a list of block indices"
    if isinstance(placement, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in placement):
            raise ConfigError(f"{path}: expected {allowed}, got {placement!r}")
        if num_blocks is None:
            return None
        out_of_range = [i for i in placement if i >= num_blocks]
        if out_of_range:
            raise ConfigError(f"{path}: block indices {out_of_range} out of range for a "
                              f"{num_blocks}-block backbone")
        return sorted(set(placement))
    if not isinstance(placement, str):
        raise ConfigError(f"{path}: expected {allowed}, got {placement!r}")
    if placement == "all":
        return None if num_blocks is None else list(range(num_blocks))
    kind, _, arg = placement.partition(":")
    if kind not in ("top", "bottom", "every") or not arg.isdigit() or int(arg) <= 0:
        raise ConfigError(f"{path}: expected {allowed}, got {placement!r}")
    k = int(arg)
    if num_blocks is None:
        return None
    if kind != "every" and k > num_blocks:
        raise ConfigError(f"{path}: {placement!r} asks for {k} blocks of {num_blocks}")
    if kind == "top":
        return list(range(num_blocks - k, num_blocks))
    if kind == "bottom":
        return list(range(k))
    # every:N keeps the last block adapted (the deepest blocks matter most, Table 7).
    return sorted(range(num_blocks - 1, -1, -k))


# ----------------------------------------------------------------------------------------------
# Generic dataclass building with field-naming errors
# ----------------------------------------------------------------------------------------------

def _check(ok: bool, path: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{path}: expected {allowed}, got {value!r}")


def _validate_tree(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{f.name}" if path else f.name)
    if hasattr(obj, "validate") and path:
        obj.validate(path)


def _build(cls: type, data: Any, path: str) -> Any:
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{path + '.' if path else ''}{unknown[0]}: unknown field; "
                          f"allowed fields{' of ' + path if path else ''}: {names}")
    kwargs = {}
    for name in names:
        if name in data:
            sub = f"{path}.{name}" if path else name
            kwargs[name] = _coerce(hints[name], data[name], sub)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path}: a value is required")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(errors) == 1 else
                          f"{path}: expected {' or '.join(_type_name(o) for o in options)}, "
                          f"got {value!r}")
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {_type_name(item)}, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)
