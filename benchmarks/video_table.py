"""Video-table benchmark: what each training decode task pays to receive the whole video list.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/video_table.py [--videos 240000] [--gop 2]
[--tasks 3]``

Every training decode task gets the whole list of training videos (it picks its own from the
epoch's order). This builds ``--videos`` rows as the scan makes them (id, path, label, frame
count, and the keyframe table of a 300-frame file with a keyframe every ``--gop`` frames: the
prepared default), puts the list into a local Ray cluster's object store as a list of dicts and as
a :class:`pipelines.data.video_table.VideoTable`, and has a task fetch each ``--tasks`` times: CPU and
wall seconds per task, and CPU ms per clip at 16 clips a task (``data.videos_per_task``).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.data.video_table import VideoTable  # noqa: E402

CLIPS_PER_TASK = 16


def scanned_rows(n: int, gop: int) -> list[dict]:
    """Each row with lists of its own, as the scan makes them (shared lists would be pickled
    once and referred back to, which is cheaper than real rows)."""
    keyframes = range(0, 300, gop)
    return [{"video_id": f"class_{i % 400:03d}/video_{i:07d}",
             "path": f"/data/kinetics400/train/class_{i % 400:03d}/video_{i:07d}.mp4",
             "label": i % 400, "num_frames": 300, "keyframe_indices": list(keyframes),
             "keyframe_pts": [512 * k for k in keyframes]} for i in range(n)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=240_000)
    parser.add_argument("--gop", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=3)
    args = parser.parse_args(argv)
    import ray

    @ray.remote(num_cpus=1)
    def fetch(holder: list) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        table = ray.get(holder[0])      # a nested ref: fetched and deserialised here, as a task's
        table[len(table) // 2]          # function arguments are, then one row read
        return time.process_time() - cpu, time.perf_counter() - wall

    rows = scanned_rows(args.videos, args.gop)
    pickled = len(pickle.dumps(rows, protocol=5))
    started = time.process_time()
    table = VideoTable(rows)
    build_s = time.process_time() - started
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        results = {}
        for name, value in (("list of dicts", rows), ("VideoTable", table)):
            ref = ray.put(value)
            ray.get(fetch.remote([ref]))            # the task's process starts and warms
            runs = [ray.get(fetch.remote([ref])) for _ in range(args.tasks)]
            results[name] = min(cpu for cpu, _ in runs), min(wall for _, wall in runs)
            del ref
    finally:
        ray.shutdown()
    print(f"{args.videos} videos, a keyframe every {args.gop} of 300 frames; VideoTable built in "
          f"{build_s:.2f} s of CPU, once per run (and sweep trial); as a list of dicts "
          f"{pickled / 1e6:.0f} MB of pickle, {pickled / args.videos / 1e3:.2f} KB a video; "
          f"best of {args.tasks} tasks")
    print("| video list as | CPU s per task | wall s per task | CPU ms per clip (16 a task) |")
    print("|---|---|---|---|")
    for name, (cpu, wall) in results.items():
        print(f"| {name} | {cpu:.3f} | {wall:.3f} | {1e3 * cpu / CLIPS_PER_TASK:.2f} |")
    dicts, columns = results["list of dicts"][0], results["VideoTable"][0]
    print(f"list of dicts / VideoTable, CPU per task: {dicts / max(columns, 1e-6):.0f}x")


if __name__ == "__main__":
    main()
