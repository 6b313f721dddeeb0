"""Specification of the dataset manifest (aim_core.manifest) and of reading a prepared set through
the annotations: one digest names the data (sources by content, labels, splits, settings), not
where it is stored; a manifest edited by hand or escaping its folder is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from aim_core.annotations import AnnotationError, load_split
from aim_core.config import Config, PrepareConfig
from aim_core.manifest import MANIFEST_FILE, DatasetManifest, ManifestEntry, ManifestError
from pipelines.data.prepare import file_name

CLASSES = ["archery", "bowling"]


def entry(split: str, video_id: str, label: int, **changes) -> ManifestEntry:
    base = ManifestEntry(split=split, video_id=video_id, label=label, label_name=CLASSES[label],
                         path=f"videos/{split}/{video_id}.mp4", source=f"/raw/{video_id}.mp4",
                         source_sha256=f"{hash(video_id) & 0xffff:064x}", source_bytes=1000,
                         sha256="ab" * 32, size_bytes=2000, num_frames=300, fps=30.0,
                         duration=10.0, width=340, height=256)
    return replace(base, **changes)


def manifest(*entries: ManifestEntry, **storage) -> DatasetManifest:
    settings = {**PrepareConfig().storage(), **storage}
    return DatasetManifest(list(CLASSES), settings, list(entries or [
        entry("train", "a", 0), entry("train", "b", 1), entry("val", "c", 0)]))


def test_the_digest_ignores_where_the_set_is_stored_and_the_encoders_bytes():
    moved = manifest(entry("train", "a", 0, source="s3://bucket/a.mp4", path="v/a.mp4",
                           sha256="cd" * 32, size_bytes=1999),
                     entry("train", "b", 1), entry("val", "c", 0))
    assert moved.digest() == manifest().digest()
    assert DatasetManifest(CLASSES, manifest().storage, manifest().entries, created=0).digest() \
        == manifest().digest()


@pytest.mark.parametrize("changed", [
    manifest(entry("train", "a", 1), entry("train", "b", 1), entry("val", "c", 0)),   # a label
    manifest(entry("val", "a", 0), entry("train", "b", 1), entry("val", "c", 0)),     # a split
    manifest(entry("train", "a", 0, source_sha256="0" * 64), entry("train", "b", 1),
             entry("val", "c", 0)),                                                   # a source
    manifest(entry("train", "a", 0), entry("val", "c", 0)),                           # a video
    manifest(gop=4),                                                                  # settings
], ids=["label", "split", "source bytes", "missing video", "settings"])
def test_the_digest_changes_with_labels_splits_sources_videos_and_settings(changed):
    assert changed.digest() != manifest().digest()


def test_each_split_has_its_own_digest_sizes_and_class_counts():
    other_train = manifest(entry("train", "a", 0), entry("val", "c", 0))
    assert other_train.digest("val") == manifest().digest("val")
    assert other_train.digest("train") != manifest().digest("train")
    assert manifest().split_sizes() == {"train": 2, "val": 1}
    assert manifest().class_counts() == {"train": {"archery": 1, "bowling": 1},
                                          "val": {"archery": 1, "bowling": 0}}


def test_a_saved_manifest_reads_back_and_a_hand_edited_one_is_refused(tmp_path: Path):
    manifest().save(str(tmp_path))
    assert DatasetManifest.load(str(tmp_path)).digest() == manifest().digest()
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    data["videos"][0]["label"] = 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"manifest\.json: its digest .* does not match"):
        DatasetManifest.load(str(tmp_path))


def test_a_missing_or_broken_manifest_is_named(tmp_path: Path):
    with pytest.raises(ManifestError, match="no such file .*aim-video prepare"):
        DatasetManifest.load(str(tmp_path))
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        DatasetManifest.load(str(tmp_path))


def prepared_config(root: Path) -> Config:
    return Config().with_overrides({"data.format": "prepared", "data.root": str(root)})


def test_a_prepared_set_loads_its_splits_and_labels_from_the_manifest(tmp_path: Path):
    manifest().save(str(tmp_path))
    train = load_split(prepared_config(tmp_path).data, "train")
    assert train.class_map.names == CLASSES
    assert [(r.video_id, r.label, r.path) for r in train.records] == [
        ("a", 0, str(tmp_path / "videos/train/a.mp4")),
        ("b", 1, str(tmp_path / "videos/train/b.mp4"))]
    assert [r.video_id for r in load_split(prepared_config(tmp_path).data, "val").records] == ["c"]


def test_a_manifest_path_that_leaves_the_set_is_rejected_not_followed(tmp_path: Path):
    manifest(entry("train", "a", 0, path="../../etc/passwd"), entry("train", "b", 1,
             path="/etc/shadow"), entry("train", "c", 0, path="s3://elsewhere/c.mp4"),
             entry("val", "d", 0)).save(str(tmp_path))
    train = load_split(prepared_config(tmp_path).data, "train")
    assert train.records == []
    assert [reason for _, reason in train.rejected] == \
        [f"manifest path leads out of {tmp_path}"] * 3


def test_a_folder_without_a_manifest_is_a_one_line_data_root_error(tmp_path: Path):
    with pytest.raises(AnnotationError, match=r"^data\.root: .*manifest\.json: no such file"):
        load_split(prepared_config(tmp_path).data, "train")


@pytest.mark.parametrize("video_id, safe", [
    ("abseiling/-3B32lodo2M_000059_000069", True), ("12345", True),
    ("../escape", False), ("/abs/path", False), ("a//b", False), ("a\\b", False), ("", False)])
def test_prepared_file_names_keep_safe_ids_and_hash_the_rest(video_id, safe):
    name = file_name(video_id)
    assert (name == video_id) is safe
    assert not name.startswith("/") and ".." not in Path(name).parts
