"""Video lists and labels from the four annotation formats, plus stratified splits and subsets.

Everything downstream (ingest, train, evaluate, predict) sees the same two things: a list of
:class:`VideoRecord` and a :class:`ClassMap`. The class map is saved with every data set and passed
back in later stages, so label indices never drift when a folder gains a class or a CSV is reordered.

Paths may be local or ``s3://`` / ``gs://`` URIs (listed and read through :mod:`pyarrow.fs`).
Structural problems (missing file, unknown format, unreadable root, malformed line) raise
:class:`AnnotationError` naming the file or field; a *video* whose label is not in the class map or
whose file is absent is not an error, it is returned in :attr:`Split.rejected` for the ingest report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow.fs as pafs

from aim_core.config import DATASET_FORMATS, DataConfig
from aim_core.storage import Location, is_uri, join

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


class AnnotationError(ValueError):
    """An annotation file, field or data root cannot be used. The message says which and why."""


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video. ``path`` is absolute (local) or a full URI; ``video_id`` is unique."""

    path: str
    label: int
    video_id: str
    label_name: str


class ClassMap:
    """Ordered class names <-> indices, with free-form metadata (e.g. which classes need order)."""

    def __init__(self, names: Sequence[str], metadata: dict[str, Any] | None = None):
        names = list(names)
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise AnnotationError(f"class names must be unique, duplicated: {dupes}")
        self.names: list[str] = names
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._index = {n: i for i, n in enumerate(names)}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"ClassMap({len(self)} classes: {self.names[:5]}{'...' if len(self) > 5 else ''})"

    def index(self, name: str) -> int:
        return self._index[name]

    def name(self, index: int) -> str:
        return self.names[index]

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.names, "metadata": self.metadata}

    def save(self, path: str) -> None:
        Location.of(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> "ClassMap":
        data = json.loads(_read_text(path, "class map"))
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise AnnotationError(f"{path}: a class map needs a 'classes' list")
        return cls(data["classes"], data.get("metadata"))


@dataclass
class Split:
    """The videos of one split, their class map, and the annotated videos that were left out.

    Unpacks as ``records, class_map = load_split(...)``; ``rejected`` holds ``(path, reason)``.
    """

    records: list[VideoRecord]
    class_map: ClassMap
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        yield self.records
        yield self.class_map


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------

def load_split(cfg: DataConfig, split: Literal["train", "val"],
               class_map: ClassMap | None = None) -> Split:
    """Records of ``split``. Pass the saved ``class_map`` in later stages to pin label indices."""
    if split not in ("train", "val"):
        raise AnnotationError(f"split: expected 'train' or 'val', got {split!r}")
    loader = _LOADERS.get(cfg.format)
    if loader is None:
        raise AnnotationError(f"data.format: expected one of {list(DATASET_FORMATS)}, "
                              f"got {cfg.format!r}")
    return loader(cfg, split, class_map)


def stratified_split(records: Sequence[VideoRecord], val_fraction: float, seed: int
                     ) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """Seeded per-class hold-out: ``round(n * val_fraction)`` per class, at least one of each side
    when a class has two or more videos. Order of the input does not matter."""
    train, val = [], []
    for label, group in _by_class(records).items():
        n = len(group)
        n_val = 0 if n < 2 else min(n - 1, max(1, _round(n * val_fraction)))
        order = _permutation(len(group), seed, label, "val")
        chosen = {group[i].video_id for i in order[:n_val]}
        for r in group:
            (val if r.video_id in chosen else train).append(r)
    return _keep_order(records, train), _keep_order(records, val)


def fraction_subset(records: Sequence[VideoRecord], fraction: float, seed: int
                    ) -> list[VideoRecord]:
    """A stratified subset with ``fraction`` of each class (at least one video per class).

    Nested across fractions: each class is permuted once per seed and the subset is a prefix of
    that permutation, so the 1% subset is inside the 5% one, which is inside the 10% one, and so on.
    """
    if not 0 < fraction <= 1:
        raise AnnotationError(f"data.train_fraction: expected a number in (0, 1], got {fraction!r}")
    if fraction == 1:
        return list(records)
    keep: set[str] = set()
    for label, group in _by_class(records).items():
        k = max(1, _round(len(group) * fraction))
        order = _permutation(len(group), seed, label, "subset")
        keep.update(group[i].video_id for i in order[:k])
    return [r for r in records if r.video_id in keep]


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------

def _load_folder(cfg: DataConfig, split: str, class_map: ClassMap | None) -> Split:
    """``root/<class>/<video>``; classes sorted by name; seeded stratified train/val split."""
    fs, root = _filesystem(cfg.root, "data.root")
    entries = _list(fs, root, "data.root", recursive=True)
    found_classes = sorted(e.path[len(root) + 1:] for e in entries
                           if e.type == pafs.FileType.Directory and "/" not in e.path[len(root) + 1:]
                           and not _hidden(e.base_name))
    if class_map is None:
        if not found_classes:
            raise AnnotationError(f"data.root: {cfg.root} has no class sub-folders "
                                  f"(format 'folder' expects root/<class>/<video>)")
        class_map = ClassMap(found_classes)
    records, rejected = [], []
    for e in sorted(entries, key=lambda e: e.path):
        if e.type != pafs.FileType.File or not _is_video(e.base_name):
            continue
        rel = PurePosixPath(e.path[len(root) + 1:])
        uri = _uri(cfg.root, e.path)
        if len(rel.parts) < 2 or any(_hidden(p) for p in rel.parts):
            if len(rel.parts) < 2:
                rejected.append((uri, "not inside a class folder"))
            continue
        name = rel.parts[0]
        if name not in class_map:
            rejected.append((uri, f"class folder {name!r} is not in the class map"))
            continue
        records.append(VideoRecord(uri, class_map.index(name), str(rel.with_suffix("")), name))
    train, val = stratified_split(records, cfg.val_fraction, cfg.seed)
    return Split(train if split == "train" else val, class_map, rejected)


def _load_kinetics_csv(cfg: DataConfig, split: str, class_map: ClassMap | None) -> Split:
    """Kinetics CSVs; files ``{youtube_id}_{start:06d}_{end:06d}.<ext>`` anywhere under root."""
    path = _annotation_path(cfg, split)
    if class_map is None:
        if cfg.labels_file:
            class_map = ClassMap(_read_lines(cfg.labels_file, "data.labels_file"))
        else:
            source = cfg.train_annotations or path
            field_name = "data.train_annotations" if cfg.train_annotations else _field(split)
            class_map = ClassMap(sorted({row["label"] for row in _read_csv(source, field_name)}))
    files = _index_files(cfg.root)
    records, rejected = [], []
    for row in _read_csv(path, _field(split)):
        video_id = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_" \
                   f"{int(float(row['time_end'])):06d}"
        where = files.get(video_id)
        if where is None:
            rejected.append((video_id, f"no video file named {video_id}.* under {cfg.root}"))
        elif row["label"] not in class_map:
            rejected.append((where, f"label {row['label']!r} is not in the class map"))
        else:
            records.append(VideoRecord(where, class_map.index(row["label"]), video_id,
                                       row["label"]))
    return Split(records, class_map, rejected)


def _load_list(cfg: DataConfig, split: str, class_map: ClassMap | None) -> Split:
    """mmaction2 list files: ``relative/path.mp4 label_index`` per line, relative to root."""
    path = _annotation_path(cfg, split)
    if class_map is None:
        if cfg.labels_file:
            class_map = ClassMap(_read_lines(cfg.labels_file, "data.labels_file"))
        else:
            # Without names, the class count must cover both splits so indices agree between them.
            sources = [(p, f) for p, f in ((cfg.train_annotations, "data.train_annotations"),
                                           (cfg.val_annotations, "data.val_annotations")) if p]
            top = max((lab for p, f in sources for _, lab, _ in _parse_list(p, f)), default=-1)
            class_map = ClassMap([f"class_{i}" for i in range(top + 1)])
    records, rejected = [], []
    for rel, label, _ in _parse_list(path, _field(split)):
        uri = join(cfg.root, rel)
        if not 0 <= label < len(class_map):
            rejected.append((uri, f"label index {label} is outside the class map "
                                  f"(0..{len(class_map) - 1})"))
            continue
        records.append(VideoRecord(uri, label, str(PurePosixPath(rel).with_suffix("")),
                                   class_map.name(label)))
    return Split(records, class_map, rejected)


def _load_ssv2_json(cfg: DataConfig, split: str, class_map: ClassMap | None) -> Split:
    """Something-Something v2: ``labels.json`` (name -> index) and train/validation entries whose
    ``template`` with the brackets removed is the class name; files ``{id}.webm`` or ``{id}.mp4``."""
    path = _annotation_path(cfg, split)
    if class_map is None:
        if not cfg.labels_file:
            raise AnnotationError("data.labels_file: format 'ssv2_json' needs the labels.json "
                                  "that maps class names to indices")
        mapping = _read_json(cfg.labels_file, "data.labels_file")
        if not isinstance(mapping, dict):
            raise AnnotationError(f"data.labels_file: {cfg.labels_file} must map names to indices")
        by_index = sorted((int(i), name) for name, i in mapping.items())
        if [i for i, _ in by_index] != list(range(len(by_index))):
            raise AnnotationError(f"data.labels_file: {cfg.labels_file} indices are not 0..N-1")
        class_map = ClassMap([name for _, name in by_index])
    entries = _read_json(path, _field(split))
    if not isinstance(entries, list):
        raise AnnotationError(f"{_field(split)}: {path} must be a JSON list of entries")
    files = _index_files(cfg.root)
    records, rejected = [], []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise AnnotationError(f"{_field(split)}: {path} entry {n} needs 'id' and 'template'")
        video_id = str(entry["id"])
        name = entry["template"].replace("[", "").replace("]", "")
        where = files.get(video_id)
        if where is None:
            rejected.append((video_id, f"no video file named {video_id}.webm/.mp4 under {cfg.root}"))
        elif name not in class_map:
            rejected.append((where, f"label {name!r} is not in the class map"))
        else:
            records.append(VideoRecord(where, class_map.index(name), video_id, name))
    return Split(records, class_map, rejected)


_LOADERS = {"folder": _load_folder, "kinetics_csv": _load_kinetics_csv, "list": _load_list,
            "ssv2_json": _load_ssv2_json}


# ----------------------------------------------------------------------------------------------
# Parsing helpers
# ----------------------------------------------------------------------------------------------

def _field(split: str) -> str:
    return f"data.{split}_annotations"


def _annotation_path(cfg: DataConfig, split: str) -> str:
    path = cfg.train_annotations if split == "train" else cfg.val_annotations
    if not path:
        raise AnnotationError(f"{_field(split)}: format {cfg.format!r} needs an annotation file "
                              f"for the {split} split")
    return path


def _read_csv(path: str, field_name: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(_read_text(path, field_name))))
    need = ("label", "youtube_id", "time_start", "time_end")
    if rows and any(k not in rows[0] for k in need):
        raise AnnotationError(f"{field_name}: {path} needs the columns {list(need)}, "
                              f"has {list(rows[0])}")
    for n, row in enumerate(rows, start=2):
        try:
            float(row["time_start"]), float(row["time_end"])
        except (TypeError, ValueError):
            raise AnnotationError(f"{field_name}: {path} line {n}: time_start/time_end must be "
                                  f"numbers, got {row['time_start']!r}, {row['time_end']!r}") from None
    return rows


def _parse_list(path: str, field_name: str) -> list[tuple[str, int, int]]:
    """(relative path, label, line number); ``rsplit`` keeps paths with spaces intact."""
    out = []
    for n, line in enumerate(_read_text(path, field_name).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise AnnotationError(f"{field_name}: {path} line {n}: expected "
                                  f"'relative/path.mp4 label_index', got {line!r}")
        out.append((parts[0], int(parts[1]), n))
    return out


def _read_lines(path: str, field_name: str) -> list[str]:
    return [ln.strip() for ln in _read_text(path, field_name).splitlines() if ln.strip()]


def _read_json(path: str, field_name: str) -> Any:
    try:
        return json.loads(_read_text(path, field_name))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{field_name}: {path} is not valid JSON ({exc})") from None


def _index_files(root: str) -> dict[str, str]:
    """Video files under ``root`` (recursively) by file stem: one listing, any layout."""
    fs, base = _filesystem(root, "data.root")
    out: dict[str, str] = {}
    for e in sorted(_list(fs, base, "data.root", recursive=True), key=lambda e: e.path):
        if e.type == pafs.FileType.File and _is_video(e.base_name):
            out.setdefault(posixpath.splitext(e.base_name)[0], _uri(root, e.path))
    return out


# ----------------------------------------------------------------------------------------------
# Filesystem helpers (local paths or URIs)
# ----------------------------------------------------------------------------------------------

def _filesystem(path: str, field_name: str) -> tuple[pafs.FileSystem, str]:
    location = _location(path, field_name)
    return location.fs, location.path


def _location(path: str, field_name: str) -> Location:
    try:
        return Location.of(path)
    except Exception as exc:  # pyarrow raises several types for bad/unsupported URIs
        raise AnnotationError(f"{field_name}: cannot open {path} ({exc})") from None


def _uri(original_root: str, fs_path: str) -> str:
    """Turn a filesystem path back into what the user gave: a local path or a full URI."""
    if is_uri(original_root):
        return f"{original_root.split('://', 1)[0]}://{fs_path}"
    return fs_path


def _list(fs: pafs.FileSystem, base: str, field_name: str, recursive: bool
          ) -> list[pafs.FileInfo]:
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        what = "does not exist" if info.type == pafs.FileType.NotFound else "is not a directory"
        raise AnnotationError(f"{field_name}: {base} {what}")
    try:
        return fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
    except OSError as exc:
        raise AnnotationError(f"{field_name}: cannot list {base} ({exc})") from None


def _read_text(path: str, field_name: str) -> str:
    location = _location(path, field_name)
    kind = location.type
    if kind != pafs.FileType.File:
        what = "not found" if kind == pafs.FileType.NotFound else "not a file"
        raise AnnotationError(f"{field_name}: annotation file {path} {what}")
    try:
        return location.read_text() or ""
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{field_name}: cannot read {path} ({exc})") from None


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not _hidden(name)


def _hidden(name: str) -> bool:
    return name.startswith(".")


# ----------------------------------------------------------------------------------------------
# Sampling helpers
# ----------------------------------------------------------------------------------------------

def _by_class(records: Sequence[VideoRecord]) -> dict[int, list[VideoRecord]]:
    """Records per label, each group sorted by video_id so results ignore the input order."""
    groups: dict[int, list[VideoRecord]] = {}
    for r in records:
        groups.setdefault(r.label, []).append(r)
    return {k: sorted(v, key=lambda r: r.video_id) for k, v in sorted(groups.items())}


def _permutation(n: int, seed: int, label: int, purpose: str) -> np.ndarray:
    """One fixed permutation per (seed, class, purpose): prefixes of it give nested subsets."""
    return np.random.default_rng([seed, label, zlib.crc32(purpose.encode())]).permutation(n)


def _keep_order(reference: Sequence[VideoRecord], chosen: list[VideoRecord]) -> list[VideoRecord]:
    ids = {r.video_id for r in chosen}
    return [r for r in reference if r.video_id in ids]


def _round(x: float) -> int:
    """Round half up (monotone, so larger fractions never give smaller subsets)."""
    return int(math.floor(x + 0.5))
