"""Which data a run trained and validated on: a name, a digest and split sizes for MLflow.

- A prepared set (``data.format: prepared``) is named by its manifest's digest, which covers the
  sources' bytes (:mod:`aim_core.manifest`); its validation split by the manifest's digest of it.
- A raw set in stream mode is named by the digest of the videos the run read: ids, labels, frame
  counts (:func:`aim_core.manifest.listing_digest`).
- Parquet mode adds how the clips were drawn: the digest of the shards' plan fingerprints.

A run that read fewer videos than a prepared set lists (a data-fraction study, or a file that
became unreadable) records the digest of what it read as well, under ``train_digest`` and
``val_digest``, so two runs agree on a digest only when they saw the same videos.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from aim_core.config import Config
from aim_core.manifest import DatasetManifest, canonical_digest, listing_digest

SPLITS = ("train", "val")


@dataclass(frozen=True)
class DataIdentity:
    name: str                                  # the set's folder name
    root: str
    kind: str                                  # manifest | listing | shards
    digest: str                                # of the whole set
    split_digests: dict[str, str]              # of the videos each split read
    split_sizes: dict[str, int]                # videos each split read
    classes: int
    profile: dict[str, Any] = field(default_factory=dict)   # extra figures for the Datasets tab


def stream_identity(cfg: Config, class_names: list[str],
                    videos: dict[str, list[dict[str, Any]]]) -> DataIdentity:
    """The identity of the videos a stream-mode run read, by split."""
    used = {s: listing_digest(class_names, videos[s]) for s in SPLITS}
    sizes = {s: len(videos[s]) for s in SPLITS}
    if cfg.data.format == "prepared":
        return _prepared(cfg, used, sizes, {s: [str(v["video_id"]) for v in videos[s]]
                                            for s in SPLITS})
    both = listing_digest(class_names, [{**v, "video_id": f"{s}/{v['video_id']}"}
                                        for s in SPLITS for v in videos[s]])
    return DataIdentity(_name(cfg), cfg.data.root, "listing", both, used, sizes, len(class_names))


def shards_identity(cfg: Config, class_names: list[str], manifests: dict[str, dict[str, Any]]
                    ) -> DataIdentity:
    """The identity of a parquet-mode run: the shards' plans (their file names' fingerprints)."""
    used = {s: canonical_digest({"classes": class_names,
                                 "shards": [x["file"] for x in manifests[s]["shards"]]})
            for s in SPLITS}
    sizes = {s: int(manifests[s]["videos"]) for s in SPLITS}
    if cfg.data.format == "prepared":
        return _prepared(cfg, used, sizes, None)
    return DataIdentity(_name(cfg), cfg.data.root, "shards", canonical_digest(used), used, sizes,
                        len(class_names))


def _prepared(cfg: Config, used: dict[str, str], sizes: dict[str, int],
              ids: dict[str, list[str]] | None) -> DataIdentity:
    manifest = DatasetManifest.load(cfg.data.root)
    listed = manifest.split_sizes()
    whole = {s: ids is not None and sorted(ids[s]) == sorted(e.video_id for e in manifest.split(s))
             for s in SPLITS}
    digests = {s: manifest.digest(s) if whole[s] else used[s] for s in SPLITS}
    return DataIdentity(_name(cfg), cfg.data.root, "manifest", manifest.digest(), digests, sizes,
                        len(manifest.classes),
                        {f"manifest_{s}_videos": listed[s] for s in SPLITS})


def _name(cfg: Config) -> str:
    return posixpath.basename(cfg.data.root.rstrip("/")) or cfg.data.root
