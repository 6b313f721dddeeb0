"""Train-augmentation benchmark: CPU time per clip of each recipe's train transform.

Run: ``.venv/bin/python benchmarks/augment.py [--frames 8] [--height 256] [--width 340]
[--size 224] [--clips 40]``

One thread (``torch.set_num_threads(1)``), as one Ray Data task per CPU runs it. A clip is uint8
``(T, H, W, 3)`` random-texture frames at the decode size; each recipe's ``build_train_transform``
runs on the same clips, side by side in one process, in alternating rounds so that load on a shared
machine spreads over all of them. Reported: median process CPU time per clip (the number that
adds up against the budget of 20 ms of CPU per clip for decoding plus augmentation) with median
wall time beside it, and each recipe's CPU time relative to the Kinetics one (crop, flip,
normalisation only). The imgaug ops are also timed one by one on ``size x size`` clips.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from aim_core.config import DataConfig
from aim_core.randaugment import OPS, Magnitudes, apply_op, draw
from aim_core.transforms import build_train_transform

RECIPES = {
    "kinetics (crop, flip)": DataConfig(horizontal_flip=True),
    "k400 ViT-L (+ PCA lighting)": DataConfig(horizontal_flip=True, pca_lighting=0.1),
    "ssv2 imgaug-n4-m7 (released)": DataConfig(horizontal_flip=False, rand_augment="imgaug-n4-m7",
                                               random_erasing=0.25),
    "ssv2 rand-m7-n4 (torchvision)": DataConfig(horizontal_flip=False,
                                                rand_augment="rand-m7-n4-mstd0.5-inc1",
                                                random_erasing=0.25),
}


def clips(count: int, frames: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (frames, -(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    texture = base.repeat(8, axis=1).repeat(8, axis=2)[:, :height, :width]  # blocks of 8x8
    noise = rng.integers(0, 32, (count, frames, height, width, 3), dtype=np.uint8)
    return [np.clip(texture.astype(np.int16) + n, 0, 255).astype(np.uint8) for n in noise]


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure_recipes(data: list[np.ndarray], size: int) -> dict[str, tuple[float, float]]:
    """Median (CPU s, wall s) per clip of each recipe's train transform."""
    transforms = {name: build_train_transform(cfg, size) for name, cfg in RECIPES.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in transforms}
    torch.manual_seed(0)
    for clip in data:
        for name, transform in transforms.items():
            samples[name].append(timed(lambda: transform(clip)))
    return {name: (statistics.median(c for c, _ in s), statistics.median(w for _, w in s))
            for name, s in samples.items()}


def measure_ops(frames: int, size: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each imgaug op on a ``(frames, 3, size, size)`` clip."""
    clip = torch.from_numpy(clips(1, frames, size, size)[0]).permute(0, 3, 1, 2).contiguous()
    mag = Magnitudes.at(7)
    torch.manual_seed(0)
    args = {name: dict(draw(len(OPS), 7).ops)[name] for name in OPS}
    return {name: statistics.median(timed(lambda: apply_op(name, args[name], clip, mag))[0]
                                    for _ in range(repeats)) for name in OPS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=340)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clips", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    data = clips(args.clips, args.frames, args.height, args.width)
    results = measure_recipes(data, args.size)
    base = results["kinetics (crop, flip)"][0]
    print(f"train transform per clip: {args.frames} x {args.height}x{args.width} -> {args.size}², "
          f"one thread, median of {args.clips} clips")
    print(f"{'recipe':32s} | {'CPU ms':>7} | {'wall ms':>7} | {'CPU vs kinetics':>15}")
    for name, (cpu, wall) in results.items():
        print(f"{name:32s} | {1000 * cpu:7.1f} | {1000 * wall:7.1f} | {cpu / base:14.2f}x")
    ops = measure_ops(args.frames, args.size, repeats=5)
    print(f"\nimgaug ops on {args.frames} x 3 x {args.size}², CPU ms (median of 5): "
          + ", ".join(f"{name} {1000 * t:.1f}" for name, t in ops.items()))
    print(f"mean over the 18 ops: {1000 * statistics.mean(ops.values()):.1f} ms (4 run per clip)")


if __name__ == "__main__":
    main()
