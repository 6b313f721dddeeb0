"""The dataset manifest: what a prepared data set holds, and one digest that names it.

"Which validation set was this number measured on?" (Kinetics-400 copies have 19,404, 19,796 or
19,877 validation videos) is the question a reported accuracy cannot answer without a name for
its data. ``aim-video prepare`` writes ``manifest.json`` beside the prepared files: per video its
split, label, source path and SHA-256, frame count, rate, duration, size and the prepared file's
own SHA-256; per split the class counts; and a digest of it all.

The digest names the *data*: which source files (by content), with which labels, in which split,
prepared with which settings. It leaves out where anything is stored (a copied or moved set keeps
its digest) and the prepared files' exact bytes (another build of x264 may encode the same frames
differently). Each split has its own digest too, so two runs can agree on their validation set
while their training subsets differ. Raw data sets get a digest of their listing instead (video
ids, labels, frame counts: :func:`listing_digest`), which names the same set but cannot see a file
whose bytes changed under the same name.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

from .storage import Location, join

MANIFEST_FILE = "manifest.json"
DIGEST_CHARS = 32           # 128 bits of SHA-256: unique enough, and fits MLflow's dataset digest
SPLITS = ("train", "val")


class ManifestError(ValueError):
    """A manifest is missing or unreadable. The message names the file."""


@dataclass(frozen=True)
class ManifestEntry:
    """One prepared video."""

    split: str
    video_id: str
    label: int
    label_name: str
    path: str                   # the prepared file, relative to the set's folder
    source: str                 # where it was prepared from, as the annotations named it
    source_sha256: str
    source_bytes: int
    sha256: str                 # of the prepared file
    size_bytes: int
    num_frames: int
    fps: float
    duration: float             # seconds
    width: int
    height: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def identity(self) -> dict[str, Any]:
        """What the digest covers: the data, not where it is stored nor the encoder's bytes."""
        return {"split": self.split, "video_id": self.video_id, "label": self.label,
                "label_name": self.label_name, "source_sha256": self.source_sha256,
                "num_frames": self.num_frames, "fps": self.fps}


@dataclass
class DatasetManifest:
    """A prepared data set: its classes, how it was stored, its videos and the files left out."""

    classes: list[str]
    storage: dict[str, Any]                  # the prepare settings that decide the files
    entries: list[ManifestEntry]
    bad: list[dict[str, str]] = field(default_factory=list)   # split, path, reason
    created: float = field(default_factory=time.time)

    def split(self, name: str) -> list[ManifestEntry]:
        return [e for e in self.entries if e.split == name]

    def split_sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Videos per class name in each split, in class order (zeros included)."""
        out = {}
        for name in SPLITS:
            counts = Counter(e.label_name for e in self.split(name))
            out[name] = {c: counts.get(c, 0) for c in self.classes}
        return out

    def digest(self, split: str | None = None) -> str:
        """The digest of the whole set, or of one split (see the module docstring)."""
        chosen = self.entries if split is None else self.split(split)
        return canonical_digest({"classes": self.classes, "storage": self.storage,
                                 "videos": sorted((e.identity() for e in chosen),
                                                  key=lambda i: (i["split"], i["video_id"]))})

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest(), "split_digests": {s: self.digest(s) for s in SPLITS},
                "split_sizes": self.split_sizes(), "class_counts": self.class_counts(),
                "classes": self.classes, "storage": self.storage, "created": self.created,
                "videos": [asdict(e) for e in sorted(self.entries,
                                                     key=lambda e: (e.split, e.video_id))],
                "bad": self.bad}

    def save(self, root: str) -> None:
        """Write ``<root>/manifest.json`` atomically: a reader sees the old one or the new one."""
        (Location.of(root) / MANIFEST_FILE).write_json(self.to_dict())

    @classmethod
    def load(cls, root: str) -> DatasetManifest:
        """Read ``<root>/manifest.json``; its recorded digest must match its contents."""
        where = join(root, MANIFEST_FILE)
        try:
            data = (Location.of(root) / MANIFEST_FILE).read_json()
        except (OSError, ValueError) as exc:
            raise ManifestError(f"{where}: unreadable ({exc})") from None
        if data is None:
            raise ManifestError(f"{where}: no such file (prepare the set with `aim-video "
                                f"prepare` first)")
        try:
            manifest = cls([str(c) for c in data["classes"]], dict(data["storage"]),
                           [ManifestEntry.from_dict(e) for e in data["videos"]],
                           list(data.get("bad", [])), float(data.get("created", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: not a dataset manifest ({type(exc).__name__}: "
                                f"{exc})") from None
        if data.get("digest") != manifest.digest():
            raise ManifestError(f"{where}: its digest {data.get('digest')!r} does not match its "
                                f"contents ({manifest.digest()}); the file was edited or damaged")
        return manifest


def canonical_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces), shortened."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def listing_digest(classes: list[str], videos: Iterable[dict[str, Any]]) -> str:
    """The digest of a raw split's listing: its classes and each video's id, label and frame
    count (``videos`` as the scan returns them)."""
    rows = sorted((str(v["video_id"]), int(v["label"]), int(v["num_frames"])) for v in videos)
    return canonical_digest({"classes": classes, "videos": rows})
