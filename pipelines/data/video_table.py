"""The training videos as columns of numpy arrays, which a Ray task maps rather than unpickles.

Every training decode task needs the whole video list: it picks its videos from the epoch's order
(``pipelines.data.clips``). Ray Data ships that list inside the task's function arguments, which
each task deserialises again. As a list of dicts holding keyframe tables that is about 1 KB of
pickle per keyframe-dense prepared video: for Kinetics-400's 240k videos 3.2 s of CPU per task,
200 ms per clip at 16 clips a task (``benchmarks/video_table.py``). As a few flat arrays Ray keeps
it out of band, so a task maps it from the object store (0.03 ms per clip) and a row is built only
for the videos the task decodes.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np


class VideoTable:
    """Rows of the same keys, each value a string, a number or a sequence of integers (ragged:
    keyframe tables); ``table[i]`` gives row ``i`` back, its sequences as int64 arrays."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        self._keys = list(rows[0]) if len(rows) else []
        if any(row.keys() != rows[0].keys() for row in rows):
            raise ValueError(f"video table: every row needs the keys {self._keys}")
        self._columns = {key: _column(key, [row[key] for row in rows]) for key in self._keys}
        self._len = len(rows)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._len <= index < self._len:
            raise IndexError(f"video table: index {index} out of range for {self._len} videos")
        index %= self._len
        return {key: _value(*self._columns[key], index) for key in self._keys}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(self._len))


def _column(key: str, values: list[Any]) -> tuple[str, np.ndarray, np.ndarray | None]:
    """``(kind, data, offsets)``: strings as UTF-8 bytes and integer sequences as int64, each
    concatenated, with their offsets; numbers as one array."""
    if all(isinstance(v, str) for v in values):
        encoded = [v.encode("utf-8", "surrogateescape") for v in values]
        return "str", np.frombuffer(b"".join(encoded), np.uint8), _offsets(encoded)
    if all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        parts = [np.asarray(v).reshape(-1) for v in values]
        if any(p.size and p.dtype.kind not in "iu" for p in parts):
            raise ValueError(f"video table: column {key!r} holds sequences of other things than "
                             f"integers")
        parts = [p.astype(np.int64) for p in parts]
        return "ints", np.concatenate(parts) if parts else np.zeros(0, np.int64), _offsets(parts)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return "number", np.asarray(values), None
    raise ValueError(f"video table: column {key!r} must hold only strings, only numbers or only "
                     f"sequences of integers")


def _offsets(parts: Sequence[Any]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])


def _value(kind: str, data: np.ndarray, offsets: np.ndarray | None, index: int) -> Any:
    if offsets is None:
        return data[index].item()
    part = data[offsets[index]:offsets[index + 1]]
    return part.tobytes().decode("utf-8", "surrogateescape") if kind == "str" else part
