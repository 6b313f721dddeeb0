"""Ray Data's own CPU per training clip: moving a clip costs what, when making it costs nothing?

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/ray_data_overhead.py [--clips 640]
[--videos-per-task 16,64] [--consumer-ms 0,50] [--epochs 4] [--no-store-check]
[--json out.json]``

The training path's shape without its work: the training dataset's slot blocks
(:func:`pipelines.data.clips.slot_blocks`), whose map tasks each yield ``videos_per_task`` ready
uint8 clips (8x224x224x3, written into one array as the decode tasks' stack does), read by one
streaming-split consumer (``EveryRowOnce``'s split) in batches of 8, either as fast as it can
(data-bound, as ``benchmarks/loader.py`` runs) or paced by a sleep per batch, as a worker waiting
on its GPU. Every CPU second the session's processes spend is then Ray's: split by process (the
split coordinator, which runs the streaming executor; the task processes; the raylet; the rest: the
loader benchmark's ``SessionCpu`` sampling), over whole epochs after the first, as measured and
beyond the processes' idle rate. The loader benchmark's "Ray / plain" ratio is this overhead on top
of the decoder's own cost. Last, one 16-clip block written into the object store, into memory the
store has not used yet against memory it reuses: most of the task processes' share.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.loader import SessionCpu  # noqa: E402

CLIP_SHAPE = (8, 224, 224, 3)     # Kinetics-400 ViT-B/16 8x16, at the model's size
BATCH = 8


def ready_clips(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A decode task whose decoding is free: one clip-sized copy per video, as the transform's
    output is copied into the block."""
    clip = np.full(CLIP_SHAPE, 7, np.uint8)
    frames = np.empty((len(batch["slot"]), *CLIP_SHAPE), np.uint8)
    for i in range(len(frames)):
        frames[i] = clip
    return {"frames": frames, "label": np.zeros(len(frames), np.int64)}


def group(kinds: dict[str, float]) -> dict[str, float]:
    """The loader benchmark's CPU by kind of process, in this table's four groups."""
    out: dict[str, float] = {}
    for kind, cpu in kinds.items():
        name = ("coordinator" if "SplitCoordinator" in kind else
                "task processes" if kind.startswith(("ray::IDLE", "ray::MapBatches")) else
                "raylet" if kind == "raylet" else "rest")
        out[name] = out.get(name, 0.0) + cpu
    return out


def measure(clips: int, per_task: int, consumer_ms: float, epochs: int) -> dict:
    """One private cluster, one dataset, ``epochs`` executions; figures over all but the first."""
    import ray
    import ray.data

    from pipelines.data.clips import slot_blocks
    from pipelines.runtime import worker_pool_settings

    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                       _system_config=worker_pool_settings(2))
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = slot_blocks(clips, per_task).map_batches(ready_clips, batch_size=None, num_cpus=1)
        (split,) = ds.streaming_split(1, equal=False)
        seconds, consumer_cpu, rows, start = 0.0, 0.0, 0, 0.0
        with SessionCpu(context.address_info["session_dir"]) as cpu:
            for epoch in range(epochs):
                wall, process = time.time(), time.process_time()
                if epoch == 1:
                    start = wall
                n = 0
                for batch in split.iter_batches(batch_size=BATCH, batch_format="numpy"):
                    n += len(batch["frames"])
                    time.sleep(consumer_ms / 1e3)
                if epoch >= 1:
                    seconds += time.time() - wall
                    consumer_cpu += time.process_time() - process
                    rows += n
            end = time.time()
            time.sleep(2)
            quiet = time.time()
            time.sleep(5)
            idle_end = time.time()
        kinds = group(cpu.by_kind(start, end))
        idle = sum(cpu.by_kind(quiet, idle_end).values()) / (idle_end - quiet)
    finally:
        ray.shutdown()
    ray_ms = 1e3 * sum(kinds.values()) / rows
    return {"videos_per_task": per_task, "consumer_ms": consumer_ms, "clips": rows,
            "clips_per_s": rows / seconds, "ray_ms": ray_ms,
            "ray_beyond_idle_ms": ray_ms - 1e3 * idle * seconds / rows, "idle_cores": idle,
            "by_kind_ms": {k: 1e3 * v / rows for k, v in sorted(kinds.items())},
            "coordinator_cores": kinds.get("coordinator", 0.0) / seconds,
            "consumer_ms_per_clip": 1e3 * consumer_cpu / rows}


def block_write_ms(store_mb: int, puts: int = 40) -> float:
    """Median CPU ms of writing one 16-clip block (19 MB) into the object store of a cluster with
    ``store_mb`` of it, each block released before the next: the store reuses released memory only
    once it has used all of it, and until then every write faults in fresh pages."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=store_mb * 2**20)
    try:
        block = np.full((16, *CLIP_SHAPE), 7, np.uint8)
        times = []
        for _ in range(puts):
            cpu = time.process_time()
            ref = ray.put(block)
            times.append(1e3 * (time.process_time() - cpu))
            del ref
    finally:
        ray.shutdown()
    return float(np.median(times[puts // 2:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=640, help="clips per epoch")
    parser.add_argument("--videos-per-task", default="16,64")
    parser.add_argument("--consumer-ms", default="0,50",
                        help="sleep per batch of 8 (0: data-bound; 50: ~160 clips/s, GPU-paced)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-store-check", action="store_true",
                        help="skip timing block writes into fresh against reused store memory")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.clips < BATCH:
        parser.error("--epochs must be at least 2 and --clips at least 8")
    rows = [measure(args.clips, int(v), float(c), args.epochs)
            for c in args.consumer_ms.split(",") for v in args.videos_per_task.split(",")]
    kinds = ["coordinator", "task processes", "raylet", "rest"]
    print(f"{args.clips} free clips an epoch ({'x'.join(map(str, CLIP_SHAPE))} uint8), "
          f"{args.epochs} epochs (the first not counted), 2 CPUs; CPU ms per clip, idle included "
          f"(in brackets: beyond the session's idle rate)")
    print("| videos per task | consumer | clips/s | Ray ms / clip | " + " | ".join(kinds) +
          " | coordinator cores |")
    print("|---" * (5 + len(kinds)) + "|")
    for r in rows:
        pace = "data-bound" if not r["consumer_ms"] else f"{r['consumer_ms']:g} ms / batch"
        print(f"| {r['videos_per_task']} | {pace} | {r['clips_per_s']:.0f} | {r['ray_ms']:.2f} "
              f"({r['ray_beyond_idle_ms']:.2f}) | "
              + " | ".join(f"{r['by_kind_ms'].get(k, 0.0):.2f}" for k in kinds)
              + f" | {r['coordinator_cores']:.2f} |")
    for c in args.consumer_ms.split(","):
        same = [r for r in rows if r["consumer_ms"] == float(c)]
        if len(same) > 1:
            base = same[0]
            print(f"consumer {c} ms: " + ", ".join(
                f"{r['videos_per_task']} per task {r['ray_beyond_idle_ms'] / base['ray_beyond_idle_ms']:.2f}x"
                for r in same[1:]) + f" the Ray CPU per clip of {base['videos_per_task']} per task")
    store = {}
    if not args.no_store_check:   # 40 blocks of 19 MB: never wrap 2 GB, wrap 256 MB three times
        store = {"fresh_ms": block_write_ms(2048), "reused_ms": block_write_ms(256)}
        print(f"writing a 16-clip block (19 MB) into the object store: {store['fresh_ms']:.1f} ms "
              f"of CPU into memory the store has not used yet, {store['reused_ms']:.1f} ms into "
              f"memory it reuses ({store['fresh_ms'] / store['reused_ms']:.1f}x; median of the "
              f"last 20 of 40 writes, 2 GB and 256 MB stores)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "block_write": store}, indent=1))


if __name__ == "__main__":
    main()
