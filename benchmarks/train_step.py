"""Training-step benchmark: AIM vs. full fine-tuning, step time and peak memory.

Run: ``.venv/bin/python benchmarks/train_step.py [--device cpu|cuda] [--steps N] [--batch 2]
[--frames 8] [--size 224] [--backbone ViT-B-16] [--precision fp32|bf16] [--checkpointing [N]]``

One training step is: forward, cross-entropy loss, backward, ``AdamW.step()`` over the tunable
parameters, ``zero_grad(set_to_none=True)``; the model is in train mode (drop path on, as in the
recipe). The backbone is the open_clip geometry named by ``--backbone`` with random weights
(``pretrained=None``): weights do not change the cost. Variants, side by side:

- ``aim``: frozen ViT + spatial, temporal and joint adapters in every block (Table 1's AIM row);
- ``timesformer``: divided space-time attention, every weight trains (the full fine-tune oracle);
- ``finetuned_space_only``: the image ViT, every weight trains, frames averaged;
- ``aim+ckpt`` (with ``--checkpointing``): AIM with activation checkpointing on every block, or
  ``aim+ckpt:N`` on the first N blocks with gradients (``--checkpointing N``: memory against time).

Each variant runs in a fresh subprocess (the script re-invokes itself with the hidden
``--only VARIANT`` flag), so allocator caches, oneDNN primitive caches and the glibc heap of one
variant cannot inflate the next one's numbers.

What is measured
  GMACs       multiply-accumulates of the step's forward and backward for the whole batch, counted
              on the meta device (``aim_core.accounting.train_gmacs_per_clip``): the work the
              device has to do, whatever the implementation;
  step time   median wall time of ``--steps`` steps after ``--warmup`` warm-up steps (the first
              step also allocates the AdamW state); CUDA steps are synchronised. ``cpu (s)`` is
              the median process CPU time of a step (all threads): on a shared CPU machine it is
              far less sensitive to other processes than wall time, and a load-average warning is
              printed when the machine was busy.
  peak memory the bytes of live tensors at the step's high point: weights, grads, AdamW state,
              activations and backward's temporaries, not an allocator's cache or reserve.
              CUDA: ``torch.cuda.max_memory_allocated()`` over the timed steps.
              CPU: torch keeps no CPU allocator statistics, so one extra, untimed step runs under
              ``benchmarks.memory.LiveTensorPeak``, a dispatch mode that adds each new storage's
              bytes and subtracts them when it is freed. ``RSS GiB`` (peak resident set growth
              since the imports) is printed beside it: it also holds what the C heap kept of
              freed tensors, which differed by up to 1 GiB between two models with the same
              tensors, so it is not used for the ratios.
              ``above model`` is the peak minus the weights, buffers and the input batch.
  targets     AIM <= 0.6x the step time and <= 0.5x the peak memory of the full fine-tune
              (``timesformer``); both ratios are printed and checked.

Default run: ViT-B/16, batch 2 x 8 frames x 224^2; ``--steps`` 3 on CPU (about 5 minutes on 2
cores for the three variants) and 20 on CUDA. Pass ``--json PATH`` to also write the results.

Reading CPU results: on a CPU the step time follows the GMACs (the matmuls are nearly all of it),
so their ratio is the floor of the time ratio. Frozen weights skip the weight-gradient matmuls
(backward is about one forward instead of two), but the trainable temporal embedding at the input
makes every block need input gradients, and AIM runs the frozen attention twice per block (over
frames and over tokens) plus the adapters: about 0.72x the full fine-tune's work for ViT-B/16.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("aim", "timesformer", "finetuned_space_only")
CKPT = "aim+ckpt"
TIME_TARGET, MEM_TARGET = 0.6, 0.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model name")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--checkpointing", nargs="?", const=0, type=int, default=None, metavar="N",
                   help="also run AIM with activation checkpointing: every block, or N blocks")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of {VARIANTS + (CKPT,)} or {CKPT}:N "
                        f"(default: all three)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 20 if args.device == "cuda" else 3
    return args


# ----------------------------------------------------------------------------------------------
# Child: one variant, one process
# ----------------------------------------------------------------------------------------------

def _checkpointed_blocks(name: str) -> int | None:
    """``aim+ckpt`` -> 0 (every block), ``aim+ckpt:N`` -> N, anything else -> None."""
    if name == CKPT:
        return 0
    if name.startswith(CKPT + ":") and name[len(CKPT) + 1:].isdigit():
        return int(name[len(CKPT) + 1:])
    return None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_variant(args: argparse.Namespace, name: str) -> dict:
    import torch
    import torch.nn.functional as F

    from aim_core.accounting import model_cost
    from aim_core.backbones import build_model, resolve_spec
    from aim_core.config import BackboneConfig, ModelConfig
    from aim_core.model import count_parameters
    from benchmarks.memory import LiveTensorPeak, storage_bytes

    logging.getLogger("aim_core").setLevel(logging.ERROR)  # "random init" warning is expected here
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    backbone = BackboneConfig(source="open_clip", name=args.backbone, pretrained=None)
    ckpt = _checkpointed_blocks(name)
    cfg = ModelConfig(variant="aim" if ckpt is not None else name, backbone=backbone,
                      num_frames=args.frames, image_size=args.size, num_classes=400,
                      grad_checkpointing=False if ckpt is None else (ckpt or True))
    resolve_spec(backbone)  # import open_clip before the memory baseline
    torch.ones(64, 64) @ torch.ones(64, 64)  # initialise the CPU kernels/thread pool, too
    if cuda:
        torch.cuda.init()
        torch.empty(1, device=device)
    rss_start = _rss_bytes()

    model = build_model(cfg, device=device).train()
    total, tunable = count_parameters(model)
    opt = torch.optim.AdamW(model.tunable_parameters(), lr=3e-4, weight_decay=0.05)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    y = torch.randint(0, cfg.num_classes, (args.batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> float:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # also synchronises CUDA

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    load = [os.getloadavg()[0]]
    for _ in range(args.warmup):
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)

    load.append(os.getloadavg()[0])
    train_gmacs = model_cost(cfg).train_gmacs_per_clip * args.batch  # meta device: no memory
    resident = [*model.parameters(), *model.buffers(), x, y]
    model_bytes = storage_bytes(resident)
    rss_growth = _maxrss_bytes() - rss_start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:  # one more, untimed step under the live-tensor tracker (it slows every op down)
        opt_state = [t for state in opt.state.values() for t in state.values()
                     if isinstance(t, torch.Tensor)]
        with LiveTensorPeak(existing=resident + opt_state) as live:
            step()
        peak = model_bytes + storage_bytes(opt_state) + live.peak
    return dict(variant=name, total_params=total, tunable_params=tunable, times=times,
                median_s=statistics.median(times), min_s=min(times), cpu_times=cpu_times,
                median_cpu_s=statistics.median(cpu_times), max_load=max(load), peak_bytes=peak,
                above_model_bytes=peak - model_bytes, rss_growth_bytes=rss_growth,
                train_gmacs=train_gmacs, device=str(device), threads=torch.get_num_threads(),
                torch=torch.__version__)


# ----------------------------------------------------------------------------------------------
# Parent: spawn one child per variant, print the table
# ----------------------------------------------------------------------------------------------

def _child_argv(args: argparse.Namespace, name: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--only", name,
            "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--frames", str(args.frames), "--size", str(args.size),
            "--backbone", args.backbone, "--precision", args.precision]
    return argv


def _spawn(args: argparse.Namespace, name: str) -> dict:
    proc = subprocess.run(_child_argv(args, name), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.only:
        print("RESULT " + json.dumps(run_variant(args, args.only)), flush=True)
        return 0

    names = list(VARIANTS)
    if args.checkpointing is not None:
        names.append(f"{CKPT}:{args.checkpointing}" if args.checkpointing else CKPT)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",")]
        bad = [v for v in names if v not in VARIANTS and _checkpointed_blocks(v) is None]
        if bad:
            raise SystemExit(f"--variants: unknown {bad}; choose from {VARIANTS + (CKPT,)}")
    print(f"train step: {args.backbone} (random init), batch {args.batch} x {args.frames} frames x "
          f"{args.size}^2, {args.precision}, device {args.device}, "
          f"{args.warmup} warm-up + {args.steps} timed steps, one process per variant", flush=True)
    results = {}
    for name in names:
        t0 = time.perf_counter()
        results[name] = r = _spawn(args, name)
        print(f"  {name:<22s} done in {time.perf_counter() - t0:5.1f} s "
              f"(steps: {', '.join(f'{t:.2f}' for t in r['times'])} s)", flush=True)
    first = next(iter(results.values()))
    mem_kind = ("cuda max_memory_allocated" if args.device == "cuda"
                else "peak bytes of live tensors (LiveTensorPeak)")
    print(f"\ntorch {first['torch']}, {first['threads']} threads; memory = {mem_kind}\n")
    header = (f"{'variant':<22s} {'tunable':>9s} {'total':>9s} {'GMACs':>7s} {'step (s)':>9s} "
              f"{'cpu (s)':>8s} {'peak GiB':>9s} {'above model':>12s} {'RSS GiB':>8s}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<22s} {r['tunable_params'] / 1e6:8.2f}M {r['total_params'] / 1e6:8.2f}M "
              f"{r['train_gmacs']:7.0f} {r['median_s']:9.3f} {r['median_cpu_s']:8.2f} "
              f"{_gib(r['peak_bytes']):>9s} {_gib(r['above_model_bytes']):>12s} "
              f"{_gib(r['rss_growth_bytes']):>8s}")
    busy = max(r["max_load"] for r in results.values())
    if args.device == "cpu" and busy > (os.cpu_count() or 1):
        print(f"WARNING: 1-min load average reached {busy:.1f} on {os.cpu_count()} CPUs during the "
              f"run: wall times are inflated by other processes; 'cpu (s)' (process CPU time, all "
              f"threads, median) is the steadier comparison")

    if "timesformer" in results:
        ref = results["timesformer"]
        print()
        for name in [n for n in results if n != "timesformer"]:
            r = results[name]
            print(f"{name}/timesformer: step GMACs {r['train_gmacs'] / ref['train_gmacs']:.2f}x, "
                  f"time {r['median_s'] / ref['median_s']:.2f}x "
                  f"(cpu time {r['median_cpu_s'] / ref['median_cpu_s']:.2f}x), "
                  f"peak memory {r['peak_bytes'] / ref['peak_bytes']:.2f}x, above-model memory "
                  f"{r['above_model_bytes'] / ref['above_model_bytes']:.2f}x")
        for name in [n for n in results if n == "aim" or _checkpointed_blocks(n) is not None]:
            r = results[name]
            t_ratio = r["median_s"] / ref["median_s"]
            m_ratio = r["peak_bytes"] / ref["peak_bytes"]
            ok_t, ok_m = t_ratio <= TIME_TARGET, m_ratio <= MEM_TARGET
            verdict = "HOLD" if ok_t and ok_m else "MISSED"
            print(f"targets for {name} (time <= {TIME_TARGET}x: {t_ratio:.2f}x "
                  f"{'ok' if ok_t else 'MISS'}; memory <= {MEM_TARGET}x: {m_ratio:.2f}x "
                  f"{'ok' if ok_m else 'MISS'}) on {args.device}/{args.precision}: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
