"""Validate manifests against KubeRay's own CRD schemas, as strictly as the API server does.

The schemas under ``tests/schemas/kuberay-<version>/`` are the ``openAPIV3Schema`` of KubeRay's
``ray.io/v1`` CRDs, unchanged. The API server treats them as structural schemas: a field a schema
does not declare is pruned, and ``kubectl apply`` (strict field validation, the default since
Kubernetes 1.27) reports it as an error, unless ``x-kubernetes-preserve-unknown-fields`` keeps it.
:func:`strict` turns that into JSON Schema (``additionalProperties: false`` wherever the schema
does not say otherwise), so a typo deep in a pod template fails here, not at ``kubectl apply``.
CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

KUBERAY_VERSION = "v1.5.1"
SCHEMAS = Path(__file__).parent / "schemas" / f"kuberay-{KUBERAY_VERSION}"
SCHEMA_FILES = {"RayCluster": "ray.io_rayclusters.v1.json", "RayJob": "ray.io_rayjobs.v1.json"}

# A custom resource's own metadata is ObjectMeta, which the API server validates itself (the
# CRDs declare it as a bare object); these are the fields a manifest may set.
OBJECT_META = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with unknown fields refused and ``nullable`` honoured, recursively."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    for key in ("additionalProperties", "items", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = strict(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(s) for s in schema[key]]
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


@lru_cache(maxsize=None)
def validator(kind: str):
    import jsonschema

    schema = strict(json.loads((SCHEMAS / SCHEMA_FILES[kind]).read_text()))
    schema["properties"]["metadata"] = OBJECT_META
    return jsonschema.Draft4Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """One line per violation (``spec.headGroupSpec...: message``); empty when ``doc`` is valid."""
    errors = validator(doc["kind"]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)
