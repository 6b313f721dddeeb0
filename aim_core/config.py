"""Typed, validated configuration.

One :class:`Config` object travels from the YAML file through every stage, so a run is fully
described by the file plus its ``--set`` overrides. Validation happens at load time and every error
names the offending field by its dotted path and says what is allowed, because a typo found after an
hour of decoding is an hour lost.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from collections.abc import Mapping
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


DATASET_FORMATS = ("folder", "kinetics_csv", "list", "ssv2_json", "prepared")
SAMPLERS = ("dense", "uniform", "uniform_tsn")


@dataclass(frozen=True)
class RandAugmentSpec:
    """A ``data.rand_augment`` value, read: whose RandAugment, how many ops, at what magnitude."""

    family: Literal["imgaug", "torchvision"]
    num_ops: int
    magnitude: int          # imgaug: of 30; torchvision: of 10 (timm's scale)
    flip: bool = False      # imgaug's built-in horizontal flip (p = 0.5)


_RAND_AUGMENT_FORMS = ("null, 'imgaug-n<ops>-m<0..30>[-noflip]' (imgaug's RandAugment, the "
                       "released SSv2 recipe: imgaug-n4-m7) or a timm string "
                       "'rand-m<0..10>-n<ops>[-mstd..]' (torchvision's)")
_TIMM_IGNORED_KEYS = ("mstd", "mmax", "inc", "w", "p")


def parse_rand_augment(spec: str, path: str = "data.rand_augment") -> RandAugmentSpec:
    """Read a ``data.rand_augment`` string; errors name ``path`` and the allowed forms.

    timm strings keep timm's defaults (m10, n2) and clamp ``m`` to 0..10; torchvision has no
    magnitude noise, op weights or "increasing" variants, so ``mstd``, ``mmax``, ``inc``, ``w``
    and ``p`` are accepted and ignored.
    """
    imgaug = re.fullmatch(r"imgaug-n(\d+)-m(\d+)(-noflip)?", spec)
    if imgaug:
        ops, magnitude = int(imgaug[1]), int(imgaug[2])
        _check(magnitude <= 30, path, "an imgaug magnitude m in 0..30", spec)
        return RandAugmentSpec("imgaug", ops, magnitude, flip=imgaug[3] is None)
    parts = spec.split("-")
    _check(parts[0] == "rand", path, _RAND_AUGMENT_FORMS, spec)
    magnitude, num_ops = 10, 2
    for part in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
        _check(match is not None and match[1] in ("m", "n", *_TIMM_IGNORED_KEYS), path,
               f"timm options m, n, {', '.join(_TIMM_IGNORED_KEYS)} (cannot read {part!r})", spec)
        if match[1] == "m":
            magnitude = min(max(round(float(match[2])), 0), 10)
        elif match[1] == "n":
            num_ops = int(float(match[2]))
    return RandAugmentSpec("torchvision", num_ops, magnitude)


@dataclass
class DataConfig:
    """Where the videos are, how they are labelled, and how clips are drawn from them."""

    root: str = "demo_data/videos"
    # prepared: a set written by `aim-video prepare` (root: its folder, splits from its manifest)
    format: Literal["folder", "kinetics_csv", "list", "ssv2_json", "prepared"] = "folder"
    # Annotation files by split (format-dependent: CSV, list file, SSv2 JSON); empty for `folder`.
    train_annotations: str | None = None
    val_annotations: str | None = None
    labels_file: str | None = None          # SSv2 labels.json
    val_fraction: float = 0.2               # held-out share when the annotations have no val split
    train_fraction: float = 1.0             # nested, stratified subset for data-efficiency studies
    seed: int = 0
    # dense: clip_len x interval (Kinetics); uniform: one frame per segment by the released configs'
    # rule (SSv2, Diving-48); uniform_tsn: TSN-style segments of num_frames / clip_len.
    sampler: Literal["dense", "uniform", "uniform_tsn"] = "dense"
    frame_interval: int = 16                # dense sampler only
    test_clips: int = 3                     # temporal views at test time
    test_crops: int = 1                     # spatial views at test time (1 centre or 3 crops)
    short_side: int = 256                   # resize at decode time
    # Random-resized-crop area range in training; the released configs use (0.08, 1).
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    horizontal_flip: bool = True            # never for direction-dependent classes
    # imgaug-n4-m7: the released SSv2 recipe, imgaug's RandAugment (m of 30, with its own flip and
    # crop; -noflip drops the flip); rand-m7-n4-...: a timm string, torchvision's (m of 10).
    rand_augment: str | None = None
    pca_lighting: float = 0.0               # std of PCA lighting noise (ViT-L K400 release: 0.1)
    random_erasing: float = 0.0
    label_smoothing: float = 0.0
    # Ray Data
    mode: Literal["stream", "parquet"] = "stream"
    shards_dir: str | None = None           # materialised Parquet shards (mode=parquet)
    # Ray Data's cost is per task and block, whatever its size (README, "Ray Data's own cost per
    # clip"). Scan, ingest, prepare and evaluation tasks take this many videos (an evaluation task
    # holds all their test views at once: 60-180 MB at 16 for 8x224^2 and 3x1 or 3x3 views) ...
    videos_per_task: int = 16
    # ... training decode tasks as many as fill a block of this many MiB of model-sized clips (69
    # 8x224^2 clips, 17 of 32 frames), but beyond videos_per_task at most an eighth of a
    # worker's share of an epoch.
    train_block_mb: int = 80
    decode_threads: int = 1
    prefetch_batches: int = 2               # batches a training worker keeps ready

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
        if self.rand_augment is not None:
            parse_rand_augment(self.rand_augment, f"{path}.rand_augment")
        _check(self.pca_lighting >= 0, f"{path}.pca_lighting", "a non-negative number",
               self.pca_lighting)
        _check(0 <= self.random_erasing <= 1, f"{path}.random_erasing", "a probability in [0, 1]",
               self.random_erasing)
        _check(0 <= self.label_smoothing < 1, f"{path}.label_smoothing", "a number in [0, 1)",
               self.label_smoothing)
        _check(self.videos_per_task > 0, f"{path}.videos_per_task", "a positive integer",
               self.videos_per_task)
        _check(0 < self.train_block_mb <= 128, f"{path}.train_block_mb",
               "an integer in [1, 128] (MiB: Ray Data splits bigger blocks)", self.train_block_mb)
        _check(self.prefetch_batches >= 0, f"{path}.prefetch_batches", "an integer >= 0",
               self.prefetch_batches)


LR_GROUPS = ("backbone", "head")


@dataclass
class OptimConfig:
    """The released recipe by default: AdamW 3e-4, wd 0.05, batch 64, 30 epochs, mmcv's cosine
    schedule with 2.5 warm-up epochs from 0.1 x lr, the release's weight-decay exemptions."""

    epochs: int = 30
    batch_size: int = 64                    # effective batch, reached with gradient accumulation
    per_device_batch: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    # Exempt from weight decay. released: class/positional embeddings and LayerNorms, by name, as
    # the released configs' paramwise_cfg; 1d_and_embeddings: every 1-D tensor and every embedding.
    no_weight_decay: Literal["released", "1d_and_embeddings"] = "released"
    # Learning-rate multipliers by parameter group: backbone (every parameter but the head, the
    # released configs' 'backbone'), head. The released ViT-L/14 K400 and SSv2: {backbone: 0.1}.
    lr_mult: dict[str, float] = field(default_factory=dict)
    # mmcv_cosine: the released schedule, cosine per epoch over all epochs, linear warm-up per step
    # from warmup_ratio x lr; cosine_epoch / cosine_step: timm's, warm-up from 0 then cosine per
    # epoch / per step over the remaining epochs.
    schedule: Literal["mmcv_cosine", "cosine_epoch", "cosine_step"] = "mmcv_cosine"
    warmup_epochs: float = 2.5
    warmup_ratio: float = 0.1               # mmcv_cosine only
    min_lr: float = 0.0
    grad_clip: float | None = None
    # Training and inference alike (aim_core.inference.autocast_dtype): auto is bf16 on GPUs that
    # have it, fp16 with a loss scaler on older GPUs, fp32 on the CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_every: int = 1
    eval_batch_size: int = 16               # views per forward in evaluation and prediction

    def validate(self, path: str) -> None:
        _check(self.epochs > 0, f"{path}.epochs", "a positive integer", self.epochs)
        _check(self.batch_size > 0, f"{path}.batch_size", "a positive integer", self.batch_size)
        _check(self.per_device_batch > 0, f"{path}.per_device_batch", "a positive integer",
               self.per_device_batch)
        _check(self.lr > 0, f"{path}.lr", "a positive number", self.lr)
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "a non-negative number",
               self.weight_decay)
        for group, mult in self.lr_mult.items():
            _check(group in LR_GROUPS, f"{path}.lr_mult", f"groups among {list(LR_GROUPS)}", group)
            _check(mult > 0, f"{path}.lr_mult.{group}", "a positive number", mult)
        _check(0 <= self.warmup_epochs < self.epochs or self.warmup_epochs == 0,
               f"{path}.warmup_epochs", f"a number in [0, epochs={self.epochs})", self.warmup_epochs)
        _check(0 < self.warmup_ratio <= 1, f"{path}.warmup_ratio", "a number in (0, 1]",
               self.warmup_ratio)
        _check(self.grad_clip is None or self.grad_clip > 0, f"{path}.grad_clip",
               "null or a positive number", self.grad_clip)
        _check(self.eval_every > 0, f"{path}.eval_every", "a positive integer", self.eval_every)
        _check(self.eval_batch_size > 0, f"{path}.eval_batch_size", "a positive integer",
               self.eval_batch_size)


STORAGE_PATH_ENV = "AIM_STORAGE_PATH"
DEFAULT_STORAGE_PATH = "aim_runs"


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow")


# x264 options beyond the settings below: part of what decides a prepared file's bytes, so a
# re-run into a set encoded with other ones is refused (aim_core.prepared.write_h264 says why).
X264_PARAMS = "mbtree=0"


@dataclass
class PrepareConfig:
    """How ``aim-video prepare`` stores a data set once for training (see :mod:`aim_core.prepared`
    for the trade-off behind the defaults)."""

    output: str | None = None   # folder or URI of the prepared set; None: <data.root>-prepared
    codec: Literal["h264", "jpeg"] = "h264"
    short_side: int = 256       # pixels; even, as H.264's 4:2:0 chroma needs
    fps: float = 30.0           # frames per second of every prepared video
    gop: int = 2                # h264: a keyframe every this many frames (1: all-intra)
    bframes: int = 0            # h264: after a seek, B-frames make the decoder run past the frame
    fast_decode: bool = True    # h264: x264's tune=fastdecode (CAVLC, no deblocking)
    crf: int = 18               # h264: x264's constant rate factor (18: visually lossless)
    preset: Literal[X264_PRESETS] = "fast"  # type: ignore[valid-type]  # h264: speed/size
    jpeg_quality: int = 90      # jpeg: libjpeg quality, 1-100

    def validate(self, path: str = "prepare") -> "PrepareConfig":
        _check(self.short_side >= 2 and self.short_side % 2 == 0, f"{path}.short_side",
               "an even integer >= 2", self.short_side)
        _check(0 < self.fps <= 240, f"{path}.fps", "a number in (0, 240]", self.fps)
        _check(self.gop >= 1, f"{path}.gop", "a positive integer", self.gop)
        _check(0 <= self.bframes <= 16, f"{path}.bframes", "an integer in [0, 16]", self.bframes)
        _check(0 <= self.crf <= 51, f"{path}.crf", "an integer in [0, 51]", self.crf)
        _check(1 <= self.jpeg_quality <= 100, f"{path}.jpeg_quality", "an integer in [1, 100]",
               self.jpeg_quality)
        return self

    @property
    def suffix(self) -> str:
        """The file name ending of this codec's files."""
        return ".mp4" if self.codec == "h264" else ".zip"

    @property
    def rate(self) -> Fraction:
        """``fps`` as a fraction of denominator at most 1001 (29.97003 gives NTSC's 30000/1001)."""
        return Fraction(self.fps).limit_denominator(1001)

    def storage(self) -> dict[str, Any]:
        """The settings that decide the prepared files' bytes (all but where they go)."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if k != "output"}
        return {**settings, "x264_params": X264_PARAMS} if self.codec == "h264" else settings


def default_storage_path() -> str:
    """``$AIM_STORAGE_PATH`` when set (the cluster manifests set it in every pod), else aim_runs.

    A config file's or ``--set``'s ``run.storage_path`` always wins: this is only the default.
    """
    return os.environ.get(STORAGE_PATH_ENV, "").strip() or DEFAULT_STORAGE_PATH


@dataclass
class RunConfig:
    """Where results go and what resources each stage asks Ray for."""

    name: str = "aim-run"
    # local folder, s3://, gs:// or an NFS mount; default: $AIM_STORAGE_PATH, else aim_runs
    storage_path: str = field(default_factory=default_storage_path)
    num_workers: int = 1
    use_gpu: bool | None = None             # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    ingest_cpus: float = 1.0                # per decode task; keeps decoding on CPU nodes
    max_failures: int = 3
    mlflow_experiment: str = "aim-video"
    tracking_uri: str | None = None         # None: $MLFLOW_TRACKING_URI or the local sqlite store
    print_every: int = 1                    # a console line every N epochs (and the last)
    system_metrics_s: float = 10.0          # MLflow system metrics from rank 0 every N s; 0: off
    register_as: str | None = None          # register the trained model under this name
    register_alias: str = "champion"        # ... and point this alias at it

    def validate(self, path: str) -> None:
        _check(self.num_workers > 0, f"{path}.num_workers", "a positive integer", self.num_workers)
        _check(self.cpus_per_worker > 0, f"{path}.cpus_per_worker", "a positive number",
               self.cpus_per_worker)
        _check(self.gpus_per_worker > 0, f"{path}.gpus_per_worker", "a positive number",
               self.gpus_per_worker)
        _check(self.ingest_cpus > 0, f"{path}.ingest_cpus", "a positive number", self.ingest_cpus)
        _check(self.max_failures >= 0, f"{path}.max_failures", "a non-negative integer",
               self.max_failures)
        _check(self.print_every > 0, f"{path}.print_every", "a positive integer", self.print_every)
        _check(self.system_metrics_s >= 0, f"{path}.system_metrics_s", "a number >= 0 (0: off)",
               self.system_metrics_s)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

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
    def load(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "Config":
        """Read a YAML file (with its ``_base_`` files), set the dotted-key ``overrides``, validate."""
        return cls.from_dict(set_dotted(_read_with_bases(Path(path), seen=()), overrides or {},
                                        cls))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Config":
        """A validated copy with dotted-key values set, e.g. ``{"optim.lr": 1e-3}``.

        The one way to change a config after it is written: the CLI's ``--set``, sweeps' trial
        settings and ``predict``'s view overrides all come here. Unknown fields are errors.
        """
        return Config.from_dict(set_dotted(self.to_dict(), overrides, Config))


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line "
                    f"{seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; every way it can be unusable is a one-line ConfigError that
    names the file (and the line): missing, a folder, unreadable, not UTF-8, empty, bad syntax, a
    key twice."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))
        raise ConfigError(f"{path}: a folder, not a YAML file" + (
            f" (its YAML files: {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})"
            if inside else ""))
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x});"
                          f" save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty (a config names at least one section)")
    return data


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """YAML with optional ``_base_`` file(s) (relative to the file), merged section-wise in order."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ cycle through {[str(p) for p in seen]}")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"{[f.name for f in dataclasses.fields(Config)]}")
    raw = data.pop("_base_", [])
    bases = [raw] if isinstance(raw, str) else raw
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: _base_: expected a file name or a list of file names, "
                          f"got {raw!r}")
    merged: dict[str, Any] = {}
    for base in bases:
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


def build_section(cls: type, data: Any, path: str) -> Any:
    """A dataclass ``cls`` from a mapping: every field type-checked, every section's
    ``validate(path)`` run, errors naming the dotted field under ``path``. How :class:`Config` is
    built, for other typed settings (a sweep's) to be built the same way."""
    obj = _build(cls, data, path)
    _validate_tree(obj, path)
    return obj


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
    if origin is dict:
        key_type, value_type = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {_type_name(key_type)} to "
                              f"{_type_name(value_type)}, got {value!r}")
        return {_coerce(key_type, k, path): _coerce(value_type, v, f"{path}.{k}")
                for k, v in value.items()}
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


# ----------------------------------------------------------------------------------------------
# Dotted-key overrides
# ----------------------------------------------------------------------------------------------

def override_type(key: str, cls: type | None = None) -> Any:
    """The declared type of the field a dotted key names in ``cls`` (default :class:`Config`).

    Raises :class:`ConfigError` naming the first part that is not a field, or a part that tries to
    go inside a plain value.
    """
    node, done = cls or Config, []
    for part in key.split("."):
        where = ".".join(done)
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{key}: {where} is a value, not a section")
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            raise ConfigError(f"{'.'.join(done + [part])}: unknown field {part!r}; allowed fields"
                              f"{' of ' + where if where else ''}: {names}")
        node = typing.get_type_hints(node)[part]
        done.append(part)
    return node


def check_override(key: str, value: Any, cls: type | None = None) -> Any:
    """``value`` coerced to the type of the field ``key`` names; errors name the key.

    Checks one value on its own (types, allowed choices), not the rules between fields, which
    hold only for a whole config.
    """
    return _coerce(override_type(key, cls), value, key)


def set_dotted(data: dict[str, Any], overrides: Mapping[str, Any], cls: type | None = None
               ) -> dict[str, Any]:
    """A copy of the config mapping ``data`` with each dotted key of ``overrides`` set.

    Keys are checked against the schema of ``cls`` first (:func:`override_type`), so a typo is an
    error and never a silently created section.
    """
    out = copy.deepcopy(data)
    for key, value in overrides.items():
        override_type(key, cls)
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return out
