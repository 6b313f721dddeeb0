"""Video lists and labels from the four annotation formats and from prepared sets (written by
``aim-video prepare``, :mod:`aim_core.manifest`), plus stratified splits and subsets.

Everything downstream (ingest, train, evaluate, predict) sees the same two things: a list of
:class:`VideoRecord` and a :class:`ClassMap`. The class map is saved with every data set and passed
back in later stages, so label indices never drift when a folder gains a class or a CSV is reordered.

Paths may be local or ``s3://`` / ``gs://`` URIs (listed and read through :mod:`pyarrow.fs`).
Structural problems (missing file, unknown format, unreadable root, malformed line, a root without
videos, an empty class folder) raise :class:`AnnotationError` naming the file or field; a *video*
whose label is not in the class map or whose file is absent is not an error, it is returned in
:attr:`Split.rejected` for the ingest report.

A local data root is walked without following symbolic links: every real file is listed once,
under the folder it really is in (so a link can neither duplicate a video nor relabel it), and a
link that leaves the root is reported in :attr:`Split.rejected`, never followed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import pyarrow.fs as pafs

from aim_core.config import DATASET_FORMATS, DataConfig
from aim_core.manifest import DatasetManifest, ManifestError
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
        data = _read_json(path, "class map")
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise AnnotationError(f"{path}: a class map needs a 'classes' list")
        return cls(data["classes"], data.get("metadata"))


@dataclass
class Split:
    """The videos of one split, their class map, and the annotated videos that were left out.

    Unpacks as ``records, class_map = load_split(...)``; ``rejected`` holds ``(path, reason)``;
    ``empty_class_folders`` the class folders without videos that the class map allowed.
    """

    records: list[VideoRecord]
    class_map: ClassMap
    rejected: list[tuple[str, str]] = field(default_factory=list)
    empty_class_folders: list[str] = field(default_factory=list)

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
    listing = _list_root(cfg.root)
    videos = [PurePosixPath(rel) for rel in listing.files
              if _is_video(rel) and not any(_hidden(p) for p in PurePosixPath(rel).parts)]
    found_classes = sorted(f for f in listing.folders if not _hidden(f))
    if class_map is None and not found_classes:
        raise AnnotationError(f"data.root: {cfg.root} has no class sub-folders "
                              f"(format 'folder' expects root/<class>/<video>)")
    if not any(len(rel.parts) > 1 for rel in videos):
        raise AnnotationError(f"data.root: {cfg.root} has no videos in class sub-folders "
                              f"(format 'folder' expects root/<class>/<video>)")
    empty = _empty_class_folders(listing, found_classes, videos, class_map)
    class_map = class_map or ClassMap(found_classes)
    records, rejected = [], list(listing.skipped)
    for rel in videos:
        uri = listing.path(str(rel))
        name = rel.parts[0]
        if len(rel.parts) < 2:
            rejected.append((uri, "not inside a class folder"))
        elif name not in class_map:
            rejected.append((uri, f"class folder {name!r} is not in the class map"))
        else:
            records.append(VideoRecord(uri, class_map.index(name), str(rel.with_suffix("")), name))
    train, val = stratified_split(records, cfg.val_fraction, cfg.seed)
    return Split(train if split == "train" else val, class_map, rejected, empty)


def _empty_class_folders(listing: _Listing, classes: list[str], videos: list[PurePosixPath],
                         class_map: ClassMap | None) -> list[str]:
    """Class folders without videos. A class map that lists them allows them (a validation set
    may lack a class); otherwise an empty folder would silently become a class, so it fails."""
    filled = {rel.parts[0] for rel in videos if len(rel.parts) > 1}
    empty = [c for c in classes if c not in filled]
    unknown = [listing.path(c) for c in empty if class_map is None or c not in class_map]
    if unknown:
        more = f" (nor {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise AnnotationError(f"data.root: class folder {unknown[0]} has no videos{more}; add "
                              f"videos, remove it, or pass a class map that lists the class")
    return [listing.path(c) for c in empty]


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
    files, rejected = _index_files(cfg.root)
    records = []
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
    files, rejected = _index_files(cfg.root)
    records = []
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


def _load_prepared(cfg: DataConfig, split: str, class_map: ClassMap | None) -> Split:
    """A set written by ``aim-video prepare``: splits and labels from ``root/manifest.json``, the
    files under root. An entry whose path would lead out of root is rejected, never followed."""
    try:
        manifest = DatasetManifest.load(cfg.root)
    except ManifestError as exc:
        raise AnnotationError(f"data.root: {exc}") from None
    class_map = class_map or ClassMap(manifest.classes)
    records, rejected = [], []
    for entry in manifest.split(split):
        rel = PurePosixPath(entry.path)
        if is_uri(entry.path) or rel.is_absolute() or ".." in rel.parts:
            rejected.append((entry.path, f"manifest path leads out of {cfg.root}"))
        elif entry.label_name not in class_map:
            rejected.append((join(cfg.root, entry.path),
                             f"label {entry.label_name!r} is not in the class map"))
        else:
            records.append(VideoRecord(join(cfg.root, entry.path), class_map.index(entry.label_name),
                                       entry.video_id, entry.label_name))
    return Split(records, class_map, rejected)


_LOADERS = {"folder": _load_folder, "kinetics_csv": _load_kinetics_csv, "list": _load_list,
            "ssv2_json": _load_ssv2_json, "prepared": _load_prepared}


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


def _index_files(root: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Video files under ``root`` (recursively) by file stem, one listing for any layout; and the
    links that were not followed, as ``(path, reason)``."""
    listing = _list_root(root)
    out: dict[str, str] = {}
    for rel in listing.files:
        if _is_video(posixpath.basename(rel)):
            out.setdefault(posixpath.splitext(posixpath.basename(rel))[0], listing.path(rel))
    if not out:
        raise AnnotationError(f"data.root: {root} has no videos ({', '.join(VIDEO_EXTENSIONS)})")
    return out, listing.skipped


# ----------------------------------------------------------------------------------------------
# Filesystem helpers (local paths or URIs)
# ----------------------------------------------------------------------------------------------

@dataclass
class _Listing:
    """What a data root holds, each real file once, as paths relative to the root (sorted)."""

    root: str                                # as the user gave it: a local path or a URI
    base: str                                # its path on the filesystem
    files: list[str]
    folders: list[str]                       # the root's own sub-folders (class folders)
    skipped: list[tuple[str, str]]           # (path, reason) of links that were not followed

    def path(self, rel: str) -> str:
        """What the user would call ``rel``: a local path, or a full URI."""
        if is_uri(self.root):
            return f"{self.root.split('://', 1)[0]}://{self.base.rstrip('/')}/{rel}"
        return join(self.root, rel)


def _list_root(root: str) -> _Listing:
    location = _location(root, "data.root")
    info = location.info()
    if info.type != pafs.FileType.Directory:
        what = "does not exist" if info.type == pafs.FileType.NotFound else "is not a directory"
        raise AnnotationError(f"data.root: {location.path} {what}")
    listing = _Listing(root, location.path, [], [], [])
    if isinstance(location.fs, pafs.LocalFileSystem):
        _walk_local(listing)
        return listing
    try:  # object stores have no links
        entries = location.fs.get_file_info(pafs.FileSelector(location.path, recursive=True))
    except OSError as exc:
        raise AnnotationError(f"data.root: cannot list {root} ({exc})") from None
    start = len(location.path.rstrip("/")) + 1
    for e in sorted(entries, key=lambda e: e.path):
        rel = e.path[start:]
        if e.type == pafs.FileType.File:
            listing.files.append(rel)
        elif e.type == pafs.FileType.Directory and "/" not in rel:
            listing.folders.append(rel)
    return listing


def _walk_local(listing: _Listing) -> None:
    """Fill ``listing`` from the real folder tree: a link is never walked into, a link to a file
    inside the root counts as that file, and a link that leads out of the root is reported."""
    base = os.path.realpath(listing.base)
    start = len(os.path.join(base, ""))         # entry paths are base + "/" + their relative path
    files: set[str] = set()
    pending = [base]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as found:
                entries = list(found)
        except OSError as exc:
            raise AnnotationError(f"data.root: cannot list {listing.root} ({exc})") from None
        for entry in entries:
            if _hidden(entry.name):
                continue
            rel = entry.path[start:].replace(os.sep, "/")
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if os.path.commonpath([real, base]) != base:
                    if entry.is_dir() or _is_video(entry.name):
                        reason = f"symbolic link to {real}, outside data.root: not followed"
                        listing.skipped.append((listing.path(rel), reason))
                elif os.path.isfile(real):  # a linked folder's files are listed where they are
                    files.add(os.path.relpath(real, base).replace(os.sep, "/"))
            elif entry.is_dir():
                pending.append(entry.path)
                if folder == base:
                    listing.folders.append(entry.name)
            elif entry.is_file():
                files.add(rel)
    listing.files = sorted(files)
    listing.folders.sort()
    listing.skipped.sort()


def _location(path: str, field_name: str) -> Location:
    try:
        return Location.of(path)
    except Exception as exc:  # pyarrow raises several types for bad/unsupported URIs
        raise AnnotationError(f"{field_name}: cannot open {path} ({exc})") from None


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
