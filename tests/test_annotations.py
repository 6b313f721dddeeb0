"""Annotation formats, class maps, splits and nested data-fraction subsets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aim_core.annotations import (AnnotationError, ClassMap, VideoRecord, fraction_subset,
                                  load_split, stratified_split)
from aim_core.config import DataConfig


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")
    return path


def records(per_class: dict[int, int]) -> list[VideoRecord]:
    return [VideoRecord(f"/v/{c}_{i}.mp4", c, f"{c}_{i}", f"c{c}")
            for c, n in per_class.items() for i in range(n)]


def count(recs: list[VideoRecord]) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in recs:
        out[r.label] = out.get(r.label, 0) + 1
    return out


# ----------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------

def test_folder_classes_are_sorted_subfolders_and_split_is_stratified(tmp_path):
    for name, n in (("walk", 10), ("jump", 5), ("run", 10)):
        for i in range(n):
            touch(tmp_path / name / f"{name}_{i}.mp4")
    touch(tmp_path / "jump" / "notes.txt")          # not a video: ignored
    touch(tmp_path / "loose.mp4")                    # not in a class folder: rejected, reported
    cfg = DataConfig(root=str(tmp_path), format="folder", val_fraction=0.2, seed=3)

    train = load_split(cfg, "train")
    val = load_split(cfg, "val")

    assert train.class_map.names == ["jump", "run", "walk"]
    assert val.class_map == train.class_map
    assert count(val.records) == {0: 1, 1: 2, 2: 2}
    assert count(train.records) == {0: 4, 1: 8, 2: 8}
    assert not {r.video_id for r in train.records} & {r.video_id for r in val.records}
    assert train.rejected == [(str(tmp_path / "loose.mp4"), "not inside a class folder")]
    assert train.records[0].path.startswith(str(tmp_path))
    assert {r.label_name for r in val.records if r.label == 0} == {"jump"}
    # The same seed gives the same split; records unpack like the (records, class_map) tuple.
    again, class_map = load_split(cfg, "val")
    assert again == val.records and class_map == val.class_map


def test_kinetics_csv_with_and_without_label_folders(tmp_path):
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,abc,10,20,train\n"
        "air drumming,def,0,10,train\n"
        "air drumming,gone,5,15,train\n")           # no file for this one
    (tmp_path / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,ghi,3,13,val\n"
        "yoga,jkl,1,11,val\n")                      # class not in training: rejected
    videos = tmp_path / "videos"
    touch(videos / "zumba" / "abc_000010_000020.mp4")   # per-label folder layout
    touch(videos / "def_000000_000010.mp4")             # flat layout
    touch(videos / "ghi_000003_000013.mp4")
    touch(videos / "jkl_000001_000011.mp4")
    cfg = DataConfig(root=str(videos), format="kinetics_csv",
                     train_annotations=str(tmp_path / "train.csv"),
                     val_annotations=str(tmp_path / "val.csv"))

    train = load_split(cfg, "train")
    val = load_split(cfg, "val")

    assert train.class_map.names == ["air drumming", "zumba"]
    assert [(r.video_id, r.label, r.label_name) for r in train.records] == [
        ("abc_000010_000020", 1, "zumba"), ("def_000000_000010", 0, "air drumming")]
    assert train.records[0].path == str(videos / "zumba" / "abc_000010_000020.mp4")
    assert [reason for _, reason in train.rejected] == [
        f"no video file named gone_000005_000015.* under {videos}"]
    assert val.class_map == train.class_map
    assert [r.video_id for r in val.records] == ["ghi_000003_000013"]
    assert val.rejected == [(str(videos / "jkl_000001_000011.mp4"),
                             "label 'yoga' is not in the class map")]


def test_list_file_with_labels_file_and_with_generated_names(tmp_path):
    (tmp_path / "train.txt").write_text("a/one.mp4 0\nb/two words.mp4 2\n\n# comment\n")
    (tmp_path / "val.txt").write_text("a/three.mp4 1\nb/four.mp4 7\n")
    (tmp_path / "labels.txt").write_text("archery\nbowling\ncurling\n")
    base = dict(root=str(tmp_path / "videos"), format="list",
                train_annotations=str(tmp_path / "train.txt"),
                val_annotations=str(tmp_path / "val.txt"))

    named = load_split(DataConfig(**base, labels_file=str(tmp_path / "labels.txt")), "train")
    assert named.class_map.names == ["archery", "bowling", "curling"]
    assert [(r.path, r.label, r.video_id, r.label_name) for r in named.records] == [
        (str(tmp_path / "videos" / "a" / "one.mp4"), 0, "a/one", "archery"),
        (str(tmp_path / "videos" / "b" / "two words.mp4"), 2, "b/two words", "curling")]
    val = load_split(DataConfig(**base, labels_file=str(tmp_path / "labels.txt")), "val")
    assert [r.label for r in val.records] == [1]
    assert val.rejected == [(str(tmp_path / "videos" / "b" / "four.mp4"),
                             "label index 7 is outside the class map (0..2)")]

    # Without a labels file the class count covers both splits, so indices agree between them.
    unnamed = load_split(DataConfig(**base), "train")
    assert unnamed.class_map.names == [f"class_{i}" for i in range(8)]


def test_list_file_malformed_line_names_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("a.mp4 0\nno_label_here\n")
    cfg = DataConfig(root=str(tmp_path), format="list", train_annotations=str(tmp_path / "train.txt"))
    with pytest.raises(AnnotationError, match=r"train\.txt line 2"):
        load_split(cfg, "train")


def test_ssv2_json_label_is_the_template_without_brackets(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({
        "Holding something next to something": "1", "Pushing something from left to right": "0"}))
    (tmp_path / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks"]},
        {"id": "42326", "label": "pushing a cup from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a cup"]},
        {"id": "100", "template": "Tearing [something] into two pieces"},  # not a known class
    ]))
    (tmp_path / "validation.json").write_text(json.dumps([
        {"id": "5", "template": "Pushing [something] from left to right"}]))
    videos = tmp_path / "videos"
    touch(videos / "78687.webm")
    touch(videos / "42326.mp4")
    touch(videos / "100.webm")
    touch(videos / "5.webm")
    cfg = DataConfig(root=str(videos), format="ssv2_json", labels_file=str(tmp_path / "labels.json"),
                     train_annotations=str(tmp_path / "train.json"),
                     val_annotations=str(tmp_path / "validation.json"))

    train = load_split(cfg, "train")

    assert train.class_map.names == ["Pushing something from left to right",
                                     "Holding something next to something"]
    assert [(r.video_id, r.label, Path(r.path).name) for r in train.records] == [
        ("78687", 1, "78687.webm"), ("42326", 0, "42326.mp4")]
    assert train.rejected == [(str(videos / "100.webm"),
                               "label 'Tearing something into two pieces' is not in the class map")]
    assert [r.video_id for r in load_split(cfg, "val").records] == ["5"]


# ----------------------------------------------------------------------------------------------
# Links, empty class folders and empty roots
# ----------------------------------------------------------------------------------------------

def three_classes(root: Path) -> set[str]:
    """``root/{a,b,c}/{a,b,c}_{0,1,2}.mp4``: nine real files; returns their paths."""
    return {str(touch(root / c / f"{c}_{i}.mp4")) for c in "abc" for i in range(3)}


def test_a_symlink_loop_lists_each_real_file_once_with_its_own_label(tmp_path):
    root = tmp_path / "videos"
    real = three_classes(root)
    (root / "b" / "loop").symlink_to("..")                         # b/loop/a/a_0.mp4, b/loop/b/...
    (root / "a" / "also_b0.mp4").symlink_to(root / "b" / "b_0.mp4")  # a file linked into class a
    cfg = DataConfig(root=str(root), format="folder", val_fraction=0.34, seed=0)

    train, val = load_split(cfg, "train"), load_split(cfg, "val")

    listed = train.records + val.records
    assert sorted(r.path for r in listed) == sorted(real)
    assert len({r.video_id for r in listed}) == 9
    assert all(Path(r.path).parent.name == r.label_name == train.class_map.name(r.label)
               for r in listed)
    assert train.class_map.names == ["a", "b", "c"] and train.rejected == []
    assert count(train.records) == {0: 2, 1: 2, 2: 2} and count(val.records) == {0: 1, 1: 1, 2: 1}


def test_links_that_leave_the_root_are_reported_and_not_followed(tmp_path):
    root, outside = tmp_path / "videos", tmp_path / "elsewhere"
    three_classes(root)
    touch(outside / "secret" / "s_0.mp4")
    (root / "c" / "out").symlink_to(outside)                        # a folder outside the root
    (root / "secret").symlink_to(outside / "secret")               # a class folder outside it
    (root / "a" / "stray.mp4").symlink_to(outside / "secret" / "s_0.mp4")
    (root / "a" / "up").symlink_to(tmp_path)                        # a loop through the parent
    cfg = DataConfig(root=str(root), format="folder", val_fraction=0.34)

    split = load_split(cfg, "train")

    assert split.class_map.names == ["a", "b", "c"]
    assert not any("elsewhere" in r.path for r in split.records)
    assert len(split.records) + len(load_split(cfg, "val").records) == 9
    reasons = dict(split.rejected)
    assert set(reasons) == {str(root / "c" / "out"), str(root / "secret"),
                            str(root / "a" / "stray.mp4"), str(root / "a" / "up")}
    assert reasons[str(root / "secret")] == (f"symbolic link to {outside / 'secret'}, outside "
                                             f"data.root: not followed")


def test_annotation_formats_index_each_real_file_once_and_never_outside_the_root(tmp_path):
    root = tmp_path / "videos"
    touch(root / "k" / "abc_000010_000020.mp4")
    touch(tmp_path / "elsewhere" / "def_000000_000010.mp4")
    (root / "k" / "loop").symlink_to("..")
    (root / "out").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end\n"
                                        "zumba,abc,10,20\nyoga,def,0,10\n")
    cfg = DataConfig(root=str(root), format="kinetics_csv",
                     train_annotations=str(tmp_path / "train.csv"))

    split = load_split(cfg, "train")

    assert [(r.video_id, r.path) for r in split.records] == [
        ("abc_000010_000020", str(root / "k" / "abc_000010_000020.mp4"))]
    assert dict(split.rejected) == {
        str(root / "out"): f"symbolic link to {tmp_path / 'elsewhere'}, outside data.root: "
                           f"not followed",
        "def_000000_000010": f"no video file named def_000000_000010.* under {root}"}


def test_an_empty_class_folder_fails_unless_the_class_map_lists_the_class(tmp_path):
    root = tmp_path / "videos"
    three_classes(root)
    (root / "d").mkdir()
    touch(root / "e" / "readme.txt")                                # no videos either
    cfg = DataConfig(root=str(root), format="folder")

    d, e = re.escape(str(root / "d")), re.escape(str(root / "e"))
    with pytest.raises(AnnotationError, match=rf"^data\.root: class folder {d} has no videos "
                                              rf"\(nor {e}\)"):
        load_split(cfg, "train")
    with pytest.raises(AnnotationError, match=rf"class folder {e} has no videos;"):
        load_split(cfg, "val", ClassMap(["a", "b", "c", "d"]))      # e is not a known class

    (root / "e" / "readme.txt").unlink()
    (root / "e").rmdir()
    split = load_split(cfg, "val", ClassMap(["a", "b", "c", "d"]))   # e.g. a val set lacking d
    assert split.empty_class_folders == [str(root / "d")]
    assert len(split.class_map) == 4 and {r.label_name for r in split.records} == {"a", "b", "c"}


@pytest.mark.parametrize("layout", ["empty", "wrong"])
def test_a_root_without_videos_fails_even_with_a_saved_class_map(tmp_path, layout):
    root = tmp_path / "videos"
    root.mkdir()
    if layout == "wrong":                                            # e.g. the parent folder
        touch(root / "notes" / "todo.txt")
    cfg = DataConfig(root=str(root), format="folder")
    no_videos = rf"^data\.root: {re.escape(str(root))} has no videos"
    with pytest.raises(AnnotationError, match=no_videos):
        load_split(cfg, "train", ClassMap(["a", "b", "c"]))
    (tmp_path / "t.csv").write_text("label,youtube_id,time_start,time_end\nzumba,abc,10,20\n")
    csv_cfg = DataConfig(root=str(root), format="kinetics_csv",
                         train_annotations=str(tmp_path / "t.csv"))
    with pytest.raises(AnnotationError, match=no_videos):
        load_split(csv_cfg, "train")


# ----------------------------------------------------------------------------------------------
# Failing fast with a message that names the problem
# ----------------------------------------------------------------------------------------------

def test_missing_annotation_file_names_field_and_file(tmp_path):
    cfg = DataConfig(root=str(tmp_path), format="kinetics_csv",
                     train_annotations=str(tmp_path / "kinetics400_train.csv"))
    with pytest.raises(AnnotationError, match=r"data\.train_annotations.*kinetics400_train\.csv.*not found"):
        load_split(cfg, "train")


def test_missing_annotation_setting_names_the_field(tmp_path):
    cfg = DataConfig(root=str(tmp_path), format="list", train_annotations=str(tmp_path / "t.txt"))
    with pytest.raises(AnnotationError, match=r"data\.val_annotations"):
        load_split(cfg, "val")


def test_unknown_format_and_unreadable_root(tmp_path):
    with pytest.raises(AnnotationError, match=r"data\.format.*'avi_folder'"):
        load_split(DataConfig(root=str(tmp_path), format="avi_folder"), "train")  # type: ignore
    with pytest.raises(AnnotationError, match=r"data\.root.*does not exist"):
        load_split(DataConfig(root=str(tmp_path / "nowhere")), "train")
    touch(tmp_path / "file.mp4")
    with pytest.raises(AnnotationError, match=r"data\.root.*not a directory"):
        load_split(DataConfig(root=str(tmp_path / "file.mp4")), "train")
    with pytest.raises(AnnotationError, match=r"no class sub-folders"):
        load_split(DataConfig(root=str(tmp_path)), "train")


def test_ssv2_without_labels_file_names_the_field(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    cfg = DataConfig(root=str(tmp_path), format="ssv2_json",
                     train_annotations=str(tmp_path / "train.json"))
    with pytest.raises(AnnotationError, match=r"data\.labels_file"):
        load_split(cfg, "train")


# ----------------------------------------------------------------------------------------------
# Class maps, splits, subsets
# ----------------------------------------------------------------------------------------------

def test_class_map_round_trips_with_metadata(tmp_path):
    cm = ClassMap(["b", "a"], {"temporal_order": {"a": True, "b": False}})
    cm.save(str(tmp_path / "sub" / "class_map.json"))
    back = ClassMap.load(str(tmp_path / "sub" / "class_map.json"))
    assert back == cm and back.names == ["b", "a"] and back.index("a") == 1 and back.name(0) == "b"
    assert back.metadata == {"temporal_order": {"a": True, "b": False}}
    with pytest.raises(AnnotationError, match="duplicated"):
        ClassMap(["a", "a"])


def test_a_truncated_class_map_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "class_map.json"
    ClassMap(["a", "b"]).save(str(path))
    path.write_text(path.read_text()[:12])
    with pytest.raises(AnnotationError, match=r"^class map: .*class_map\.json is not valid JSON"):
        ClassMap.load(str(path))


def test_fraction_subsets_are_stratified_nested_and_keep_every_class():
    recs = records({0: 100, 1: 40, 2: 3})
    subsets = {f: fraction_subset(recs, f, seed=7) for f in (0.01, 0.05, 0.1, 0.5, 1.0)}

    assert count(subsets[0.1]) == {0: 10, 1: 4, 2: 1}
    assert count(subsets[0.5]) == {0: 50, 1: 20, 2: 2}
    assert count(subsets[0.01]) == {0: 1, 1: 1, 2: 1}       # at least one video per class
    assert subsets[1.0] == recs
    ids = {f: {r.video_id for r in s} for f, s in subsets.items()}
    assert ids[0.01] <= ids[0.05] <= ids[0.1] <= ids[0.5] <= ids[1.0]
    # Seeded: same seed, same subset whatever the input order; another seed, another subset.
    assert {r.video_id for r in fraction_subset(recs[::-1], 0.1, seed=7)} == ids[0.1]
    assert {r.video_id for r in fraction_subset(recs, 0.1, seed=8)} != ids[0.1]


def test_stratified_split_is_disjoint_and_covers_every_record():
    recs = records({0: 10, 1: 7, 2: 1})
    train, val = stratified_split(recs, 0.2, seed=0)
    assert count(val) == {0: 2, 1: 1}                       # a 1-video class stays in training
    assert sorted(r.video_id for r in train + val) == sorted(r.video_id for r in recs)
