"""What a sweep is: its typed settings, validated when they are read like every config, and the
record kept next to Tune's state so that ``--resume`` and the report need nothing else.

``aim-video sweep`` builds a :class:`SweepConfig` from its flags and the ``--space`` file;
:class:`SweepMeta` is that plus what the sweep learns as it runs (its folder, the base config, the
study's settings, the MLflow parent run, the fingerprint of Tune's saved state).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aim_core.config import ConfigError, build_section, check_override, read_yaml
from aim_core.storage import Location, join

from pipelines.sweeps.studies import STUDIES, check_domain

META_FILE = "aim_sweep.json"
TRAIN_DIR = "train"
#: What a trial reports after every epoch (the ``val_`` ones on evaluated epochs) and, at its end,
#: on top of the last epoch's: the final evaluation and the model's cost.
EPOCH_METRICS = ("train_loss", "train_top1", "clips_per_s", "epoch_seconds", "val_top1",
                 "val_top5", "val_mean_class_acc")
FINAL_METRICS = ("final_top1", "final_top5", "final_mean_class_acc", "tunable_params",
                 "gmacs_per_view")


@dataclass
class AshaConfig:
    """ASHA's rungs: the first after ``grace_period`` epochs (default: a fifth of the epochs)."""

    grace_period: int | None = None
    reduction_factor: int = 2

    def validate(self, path: str) -> None:
        if self.grace_period is not None and self.grace_period < 1:
            raise ConfigError(f"{path}.grace_period: expected a positive integer, got "
                              f"{self.grace_period!r}")
        if self.reduction_factor < 2:
            raise ConfigError(f"{path}.reduction_factor: expected an integer >= 2, got "
                              f"{self.reduction_factor!r}")


@dataclass
class SpaceConfig:
    """A search space over the config (the ``--space`` file): dotted key -> domain or value.

    Domains are ``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [low, high]}`` or
    ``{loguniform: [low, high]}``; a plain value is fixed. ``num_samples`` draws the random ones.
    """

    params: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    asha: AshaConfig = field(default_factory=AshaConfig)

    def validate(self, path: str) -> None:
        if self.num_samples < 1:
            raise ConfigError(f"{path}.num_samples: expected a positive integer, got "
                              f"{self.num_samples!r}")
        for key, spec in self.params.items():
            for value in check_domain(f"{path}.params.{key}", spec):
                check_override(key, value)


@dataclass
class SweepConfig:
    """One sweep: a paper study (``study``), a search space (``space``), or both crossed."""

    study: Literal["components", "placement", "ratio", "data-fraction"] | None = None
    space: SpaceConfig = field(default_factory=SpaceConfig)
    name: str | None = None                  # default: <run.name>-<study or "space">
    fractions: list[float] | None = None     # data-fraction study; default: the paper's
    metric: str = "val_top1"                 # ranks the trials
    mode: Literal["max", "min"] = "max"
    asha: bool = False                       # stop trials that fall behind at each rung
    max_concurrent: int | None = None        # default: as many as fit the cluster

    def validate(self, path: str = "sweep") -> None:
        if self.study is None and not self.space.params:
            raise ConfigError(f"{path}: give a study (--study {', '.join(STUDIES)}) and/or a "
                              f"search space (--space FILE)")
        allowed = EPOCH_METRICS if self.asha else EPOCH_METRICS + FINAL_METRICS
        if self.metric not in allowed:
            why = " (ASHA compares trials after every epoch)" if self.asha else ""
            raise ConfigError(f"{path}.metric: expected one of {list(allowed)}{why}, "
                              f"got {self.metric!r}")
        if self.fractions is not None and not (self.fractions and
                                               all(0 < f <= 1 for f in self.fractions)):
            raise ConfigError(f"{path}.fractions: expected numbers in (0, 1], got "
                              f"{self.fractions!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"{path}.max_concurrent: expected a positive integer, got "
                              f"{self.max_concurrent!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        return build_section(cls, data, "sweep")

    @staticmethod
    def read_space(path: str | Path) -> dict[str, Any]:
        """The ``--space`` file's mapping (checked when the whole :class:`SweepConfig` is built)."""
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"--space {path}: expected a mapping with params, num_samples, asha")
        return data


@dataclass
class SweepMeta:
    """A :class:`SweepConfig` plus the state of the sweep that runs it."""

    config: SweepConfig
    name: str
    path: str                                  # the Tune experiment folder
    base: dict[str, Any]                       # the base Config.to_dict(); run.register_as: best
    settings: list[dict[str, Any]]             # the study's rows: [{"label", "overrides"}]
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    tuner_sha256: str | None = None            # of Tune's tuner.pkl as this sweep last saw it

    def save(self) -> None:
        (Location.of(self.path) / META_FILE).write_json(dataclasses.asdict(self))

    @classmethod
    def read(cls, sweep_dir: str) -> SweepMeta:
        data = (Location.of(sweep_dir) / META_FILE).read_json()
        if data is None:
            raise FileNotFoundError(f"{sweep_dir} is not an aim-video sweep (no {META_FILE})")
        return cls(**{**data, "config": SweepConfig.from_dict(data["config"])})

    @property
    def train_storage(self) -> str:
        return join(self.path, TRAIN_DIR)
