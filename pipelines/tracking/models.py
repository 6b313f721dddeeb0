"""``aim-video models``: the Model Registry at the command line, a view over ``MlflowClient``.

MLflow stays the store. Listing shows every registered version with its aliases, scores, data
set digest, backbone and tunable parameters (the tags :func:`pipelines.tracking.registry.
describe_version` writes at registration); promoting moves an alias after printing the version
that holds it and the one that will, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines import console

COLUMNS = (("version", "version"), ("aliases", "aliases"), ("val top-1", "val_top1"),
           ("mean-class", "val_mean_class_acc"), ("data set", "dataset_digest"),
           ("backbone", "backbone"), ("tunable", "tunable_params"))


@dataclass
class VersionRow:
    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    run_id: str | None

    def cell(self, key: str) -> str:
        if key == "version":
            return self.version
        if key == "aliases":
            return ",".join(f"@{a}" for a in self.aliases) or "-"
        value = self.tags.get(key, "")
        if key in ("val_top1", "val_mean_class_acc") and value:
            return f"{100 * float(value):.1f}%"
        if key == "tunable_params" and value:
            return f"{int(value):,}"
        if key == "dataset_digest" and value:
            return value[:12]
        return value or "-"


def versions(client: MlflowClient, name: str | None = None) -> list[VersionRow]:
    """Every version of ``name`` (or of every registered model), newest first per model."""
    models = [client.get_registered_model(name)] if name else client.search_registered_models()
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        found = client.search_model_versions(f"name = '{model.name}'")
        for v in sorted(found, key=lambda v: -int(v.version)):
            rows.append(VersionRow(model.name, str(v.version), sorted(by_version.get(str(v.version),
                                   [])), dict(v.tags or {}), v.run_id))
    return rows


def table(rows: list[VersionRow]) -> str:
    """One line per version under a header, grouped by model."""
    if not rows:
        return "no registered models"
    headers = ["model"] + [title for title, _ in COLUMNS]
    cells = [[r.name] + [r.cell(key) for _, key in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def promote(client: MlflowClient, name: str, version: str, alias: str = "champion") -> str:
    """Point ``alias`` at ``version`` of ``name``; returns the comparison that was printed."""
    rows = {r.version: r for r in versions(client, name)}
    if version not in rows:
        raise MlflowException(f"model {name!r} has no version {version} (it has "
                              f"{', '.join(sorted(rows, key=int)) or 'none'})")
    current = next((r for r in rows.values() if alias in r.aliases), None)
    shown = [r for r in (current, rows[version]) if r is not None and
             (r is rows[version] or r.version != version)]
    comparison = table(shown)
    console.say(comparison)
    client.set_registered_model_alias(name, alias, version)
    before = f"from version {current.version}" if current and current.version != version else \
        ("(it already was)" if current else "(new alias)")
    console.say(f"models:/{name}@{alias} -> version {version} {before}")
    return comparison
