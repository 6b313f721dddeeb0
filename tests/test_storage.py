"""Local paths and URIs read and write the same way; a video behind a URI decodes like a local one."""

from __future__ import annotations

import os

import pytest
from videotools import read_index

from aim_core.storage import Location, is_uri, join
from aim_core.video import VideoDecodeError, decode_frames, open_video_source


@pytest.fixture(params=["path", "uri"])
def folder(request, tmp_path):
    """The same folder named as a local path or as a ``file://`` URI (through pyarrow.fs)."""
    return str(tmp_path) if request.param == "path" else tmp_path.as_uri()


def test_files_are_written_with_their_folders_and_read_back(folder):
    where = Location.of(folder) / "runs" / "a"
    (where / "state.json").write_json({"epoch": 3})
    (where / "note.txt").write_text("résumé")
    assert (where / "state.json").read_json() == {"epoch": 3}
    assert (where / "note.txt").read_text() == "résumé"
    assert where.is_dir() and (where / "note.txt").is_file()
    assert str(where / "note.txt") == join(folder, "runs/a/note.txt")


def test_a_missing_file_reads_as_none(folder):
    missing = Location.of(folder) / "nothing.json"
    assert not missing.is_file()
    assert missing.read_json() is None and missing.read_text() is None


def test_join_keeps_absolute_paths_and_uris_as_they_are(tmp_path):
    assert join("s3://bucket/data", "videos/a.mp4") == "s3://bucket/data/videos/a.mp4"
    assert join("s3://bucket/data", "gs://other/b.mp4") == "gs://other/b.mp4"
    assert join(str(tmp_path), "/abs/c.mp4") == "/abs/c.mp4"
    assert join("relative", "d.mp4") == os.path.join(os.path.abspath("relative"), "d.mp4")
    assert is_uri("gs://b/k") and not is_uri(str(tmp_path))


def test_a_video_behind_a_uri_decodes_to_the_same_frames_as_the_local_file(index_video):
    with open_video_source(str(index_video)) as local:
        assert local == str(index_video)          # a local path goes to PyAV as is
        expected = decode_frames(local, [0, 7, 40])
    with open_video_source(index_video.as_uri()) as remote:
        assert not isinstance(remote, str)        # a seekable pyarrow file
        frames = decode_frames(remote, [0, 7, 40])
    assert (frames == expected).all()
    assert [read_index(f) for f in frames] == [0, 7, 40]


@pytest.mark.parametrize("name", ["missing.mp4", "empty.mp4"])
def test_a_missing_or_empty_video_fails_with_its_name(tmp_path, name):
    (tmp_path / "empty.mp4").touch()
    for ref in (str(tmp_path / name), (tmp_path / name).as_uri()):
        with pytest.raises(VideoDecodeError, match=f"{name}: (no such file|empty file)"):
            with open_video_source(ref):
                pass


def test_a_rewrite_replaces_the_file_whole_and_leaves_no_temporary_file(folder, tmp_path):
    """Manifests, class maps and markers are replaced by a rename, never rewritten in place: a
    reader (or a crash) sees the old contents or the new ones, nothing in between."""
    target = Location.of(folder) / "manifest.json"
    target.write_json({"clips": 1})
    before = os.stat(tmp_path / "manifest.json").st_ino
    with open(tmp_path / "manifest.json") as reader:   # someone reading while we rewrite
        target.write_json({"clips": 2})
        assert reader.read() == '{\n "clips": 1\n}\n'
    assert os.stat(tmp_path / "manifest.json").st_ino != before
    assert target.read_json() == {"clips": 2}
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_a_write_that_fails_leaves_the_old_file_as_it_was(folder, tmp_path):
    target = Location.of(folder) / "class_map.json"
    target.write_text('{"classes": ["a"]}')
    with pytest.raises(TypeError):
        target.write_bytes("not bytes")               # fails after the output was opened
    assert target.read_text() == '{"classes": ["a"]}'
    assert sorted(os.listdir(tmp_path)) == ["class_map.json"]


def test_a_folder_lists_its_names_and_files_can_be_deleted(folder):
    where = Location.of(folder) / "shards"
    assert where.names() == []                         # not there yet: nothing, no error
    for name in ("b.parquet", "a.parquet"):
        (where / name).write_bytes(b"x")
    assert where.names() == ["a.parquet", "b.parquet"]
    (where / "a.parquet").delete()
    (where / "a.parquet").delete()                      # already gone: no error
    assert where.names() == ["b.parquet"]
