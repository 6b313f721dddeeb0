"""The paper's ablations as lists of config overrides, and search spaces over the config.

Each study is one of the paper's tables or figures (Table 1, 7, 8, Fig. 3): a list of
:class:`Setting` rows, each a label as the paper names it and the dotted-key overrides that
make it. :mod:`pipelines.sweeps.sweep` runs them as Ray Tune trials.

Search spaces live in their own YAML (``--space FILE``), not in the config file: the config stays a
strict, valid :class:`Config` that ``train``/``eval`` accept as is, and one space can be reused over
several base configs. Format::

    num_samples: 4                       # draws of the random dimensions (grids multiply it)
    params:                              # dotted config keys
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      optim.weight_decay: {uniform: [0.0, 0.1]}
      model.adapter.ratio: {grid: [0.125, 0.25]}
      model.adapter.placement: {choice: [all, "top:6"]}
      optim.epochs: 10                   # a plain value is fixed
    asha: {grace_period: 2, reduction_factor: 2}   # optional; used with --asha

A study (``--study``) and a space combine: every study setting is crossed with the space.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from aim_core.config import Config, ConfigError

DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
RATIOS = (0.0625, 0.125, 0.25, 0.5)
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform")


# ----------------------------------------------------------------------------------------------
# Studies: the paper's ablations as lists of settings
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One row of a study: a label as the paper names it and the config overrides that make it."""

    label: str
    overrides: dict[str, Any]


def components(cfg: Config, **_: Any) -> list[Setting]:
    """Table 1: from frozen space-only to full AIM, with the fully fine-tuned baselines."""
    aim = lambda *a: {"model.variant": "aim", "model.adapter.adaptations": list(a)}
    return [Setting("frozen_space_only", {"model.variant": "frozen_space_only"}),
            Setting("finetuned_space_only", {"model.variant": "finetuned_space_only"}),
            Setting("timesformer", {"model.variant": "timesformer"}),
            Setting("aim[spatial]", aim("spatial")),
            Setting("aim[spatial,temporal]", aim("spatial", "temporal")),
            Setting("aim[spatial,temporal,joint]", aim("spatial", "temporal", "joint"))]


def placement(cfg: Config, **_: Any) -> list[Setting]:
    """Table 7: adapters in the bottom or top half of the blocks, every other block, or all."""
    from aim_core.backbones import resolve_spec

    k = max(1, resolve_spec(cfg.model.backbone).layers // 2)
    return [Setting(p, {"model.variant": "aim", "model.adapter.placement": p})
            for p in (f"bottom:{k}", f"top:{k}", "every:2", "all")]


def ratio(cfg: Config, **_: Any) -> list[Setting]:
    """Table 8: the adapters' bottleneck ratio."""
    return [Setting(f"ratio={r:g}", {"model.variant": "aim", "model.adapter.ratio": r})
            for r in RATIOS]


def data_fraction(cfg: Config, fractions: tuple[float, ...] | None = None,
                  **_: Any) -> list[Setting]:
    """Fig. 3: AIM vs the fully fine-tuned TimeSformer on nested, stratified training subsets."""
    return [Setting(f"{variant}@{f:g}", {"model.variant": variant, "data.train_fraction": f})
            for f in fractions or DEFAULT_FRACTIONS for variant in ("aim", "timesformer")]


STUDIES: dict[str, Callable[..., list[Setting]]] = {
    "components": components, "placement": placement, "ratio": ratio,
    "data-fraction": data_fraction}


# ----------------------------------------------------------------------------------------------
# Search spaces (their file is a :class:`pipelines.sweeps.settings.SpaceConfig`)
# ----------------------------------------------------------------------------------------------

def check_domain(where: str, spec: Any) -> list[Any]:
    """Check one ``params`` entry's form; returns the config values it can take, to type-check
    (a grid's or choice's values, a range's bounds, a plain value)."""
    if not isinstance(spec, dict):
        return [spec]
    if len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise ConfigError(f"{where}: expected one of {list(SPACE_KINDS)} "
                          f"(e.g. {{loguniform: [1e-4, 1e-2]}}) or a plain value, got {spec!r}")
    ((kind, args),) = spec.items()
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        return list(args)
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
        raise ConfigError(f"{where}.{kind}: expected [low, high] with low < high, got {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{where}.loguniform: bounds must be positive, got {args!r}")
    return [float(a) for a in args]


def tune_domain(spec: Any) -> Any:
    """The Tune domain of a checked ``params`` entry (:func:`check_domain`)."""
    from ray import tune

    if not isinstance(spec, dict):
        return spec
    ((kind, args),) = spec.items()
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "choice":
        return tune.choice(args)
    return (tune.uniform if kind == "uniform" else tune.loguniform)(*map(float, args))


# ----------------------------------------------------------------------------------------------
# Trial configs (shared with the report, so it describes trials exactly as they ran)
# ----------------------------------------------------------------------------------------------

def trial_overrides(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The dotted overrides of a Tune trial config: its study setting, then its space sample."""
    out = dict((trial_config.get("setting") or {}).get("overrides") or {})
    out.update(trial_config.get("space") or {})
    return out


def trial_config(base: dict[str, Any], trial: dict[str, Any]) -> Config:
    """The config a trial runs: the sweep's base with the trial's overrides."""
    return Config.from_dict(base).with_overrides(trial_overrides(trial))


def trial_label(trial_config: dict[str, Any]) -> str:
    label = (trial_config.get("setting") or {}).get("label", "")
    space = ", ".join(f"{k}={_short(v)}" for k, v in (trial_config.get("space") or {}).items())
    return " ".join(p for p in (label, f"({space})" if label and space else space) if p) or "base"


def trial_slug(trial_config: dict[str, Any]) -> str:
    """:func:`trial_label` as a folder or run name: ``ratio=0.0625``, ``optim.lr=0.001``."""
    return re.sub(r"[^A-Za-z0-9=@.,+-]+", "_", trial_label(trial_config)).strip("_")[:80] or "base"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
