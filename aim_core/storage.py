"""Local paths and URIs (``s3://``, ``gs://``, any :mod:`pyarrow.fs` filesystem) behind one API.

Annotations, class maps, ingest shards, sweep state and run markers may live on a cluster's shared
storage, and videos may be read straight from a bucket. Everything reads and writes through
:class:`Location`, so a local path and a URI behave the same; local paths stay OS paths, which PyAV
opens fastest. A :class:`Location` resolves its filesystem once and its children share it (resolving
an ``s3://`` URI can cost a request).

Every write replaces a file whole (see :meth:`Location.write_with`): a crash or a failed write
leaves the old file as it was, never a truncated one that later runs choke on.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

# Filesystems that publish an object only when its upload completes (pyarrow ``type_name``s).
_OBJECT_STORES = ("s3", "gcs", "abfs")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def scheme(path: str) -> str | None:
    """The URI scheme in lower case (``s3``, ``gs``, ``file``), or None for a plain path."""
    head, sep, _ = str(path).partition("://")
    return head.lower() if sep and _SCHEME.fullmatch(head) else None


def is_uri(path: str) -> bool:
    return scheme(path) is not None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a local file, read in 1 MiB blocks (files may be any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def join(base: str, rel: str) -> str:
    """``rel`` under ``base``; an absolute path or a URI as ``rel`` stands on its own."""
    if is_uri(rel) or os.path.isabs(rel):
        return rel
    if is_uri(base):
        return base.rstrip("/") + "/" + rel
    return os.path.join(os.path.abspath(base), rel)


@dataclass(frozen=True)
class Location:
    """A file or folder: the filesystem, its path there, and the name the user gave."""

    fs: pafs.FileSystem
    path: str      # the filesystem's own path (``bucket/key`` on s3, absolute locally)
    name: str      # a local path or the full URI: for messages and for other tools

    @classmethod
    def of(cls, path_or_uri: str) -> Location:
        """Resolve ``path_or_uri``; pyarrow's errors for bad or unsupported URIs pass through."""
        text = str(path_or_uri)
        if is_uri(text):
            fs, path = pafs.FileSystem.from_uri(text)
            return cls(fs, path, text)
        path = os.path.abspath(text)
        return cls(pafs.LocalFileSystem(), path.replace(os.sep, "/"), path)

    def __truediv__(self, child: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, child), join(self.name, child))

    def __str__(self) -> str:
        return self.name

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    @property
    def type(self) -> pafs.FileType:
        return self.info().type

    def is_file(self) -> bool:
        return self.type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.type == pafs.FileType.Directory

    def read_bytes(self) -> bytes | None:
        """The file's contents, or None when there is no such file."""
        if not self.is_file():
            return None
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str | None:
        data = self.read_bytes()
        return None if data is None else data.decode("utf-8-sig")

    def read_json(self) -> Any:
        text = self.read_text()
        return None if text is None else json.loads(text)

    def write_with(self, produce: Callable[[pa.NativeFile], Any]) -> None:
        """Write the file with ``produce(stream)``, creating its folder; afterwards the file holds
        either its old contents or all of the new ones.

        On a filesystem, ``produce`` writes a temporary file in the same folder, which is renamed
        over the file once it returns and removed if it raises. An object store publishes an
        object only when its one upload completes, but closing a stream completes it, even after
        an error: there the data is produced in memory and put in one go.
        """
        folder = posixpath.dirname(self.path)
        self.fs.create_dir(folder, recursive=True)
        if self.fs.type_name in _OBJECT_STORES:
            buffer = pa.BufferOutputStream()
            produce(buffer)
            with self.fs.open_output_stream(self.path) as f:
                f.write(buffer.getvalue())
            return
        tmp = posixpath.join(folder, f".{posixpath.basename(self.path)}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as f:
                produce(f)
            self.fs.move(tmp, self.path)
        except BaseException:
            with suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def write_bytes(self, data: bytes) -> None:
        self.write_with(lambda f: f.write(data))

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_json(self, data: Any) -> None:
        self.write_text(json.dumps(data, indent=1) + "\n")

    def make_dirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def names(self) -> list[str]:
        """The names of the files and folders directly inside this folder (none if it is absent)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(selector))

    def delete(self) -> None:
        """Remove the file; one that is already gone is no error."""
        with suppress(FileNotFoundError):
            self.fs.delete_file(self.path)

    @contextmanager
    def open_for_reading(self) -> Iterator[str | pafs.NativeFile]:
        """A local path as is, a URI as a seekable pyarrow file (what PyAV reads)."""
        if not is_uri(self.name):
            yield self.name
            return
        with self.fs.open_input_file(self.path) as handle:
            yield handle
