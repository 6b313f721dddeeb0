"""Training-step benchmark: AIM against the official implementation's math and against full
fine-tuning; step time, CPU time, peak memory, and on GPUs clips/s and MFU.

Run: ``.venv/bin/python benchmarks/train_step.py [--device cpu|cuda] [--steps N] [--batch 2]
[--frames 8] [--size 224] [--backbone ViT-B-16] [--precision fp32|bf16] [--checkpointing [N]]
[--against-official [--precision fp32,bf16] [--compile] [--profile]]``

One training step is: forward, cross-entropy loss, backward, ``AdamW.step()`` over the tunable
parameters, ``zero_grad(set_to_none=True)``; the model is in train mode. The backbone is the
open_clip geometry named by ``--backbone`` with random weights (``pretrained=None``): weights do
not change the cost.

``--against-official``: our AIM and the official implementation's math
(:mod:`benchmarks.official_math`, built from ``tests/official_reference.py``: sequence-first
``nn.MultiheadAttention`` as in the released code) with the same weights, the same tunable set
(adapters, temporal embedding, ``ln_post``, head), QuickGELU, no drop path or head dropout (the
reference has neither), in one process. Their steps alternate (the order rotates every round) so
that machine noise hits both; the losses of the first steps are printed (same weights, same
loss). Printed per precision (``--precision fp32,bf16`` does both, one after the other): median
wall and CPU time of each and ``official / ours``, the speed-up, against the target of 1.25x.
``--compile`` adds ``ours+compile`` (:func:`aim_core.model.compile_model`) to the rotation; its
compile time is reported apart. ``--profile`` then runs one more step of each under
``torch.profiler`` and prints where its CPU time went (:mod:`benchmarks.step_profile`: matmul,
attention, optimiser, the rest).

Otherwise, variants side by side, each in a fresh subprocess (the script re-invokes itself with the
hidden ``--only VARIANT`` flag, so allocator caches, oneDNN primitive caches and the glibc heap of
one variant cannot inflate the next one's numbers):

- ``aim``: frozen ViT + spatial, temporal and joint adapters in every block (Table 1's AIM row);
- ``timesformer``: divided space-time attention, every weight trains (the full fine-tune oracle);
- ``finetuned_space_only``: the image ViT, every weight trains, frames averaged;
- ``aim+ckpt`` (with ``--checkpointing``): AIM with activation checkpointing on every block, or
  ``aim+ckpt:N`` on the first N blocks with gradients (``--checkpointing N``: memory against time).

What is measured
  GMACs       multiply-accumulates of the step's forward and backward for the whole batch, counted
              on the meta device (``aim_core.accounting.train_gmacs_per_clip``): the work the
              device has to do, whatever the implementation;
  step time   median wall time of ``--steps`` steps after ``--warmup`` warm-up steps (the first
              step also allocates the AdamW state); CUDA steps are synchronised. ``cpu (s)`` is
              the median process CPU time of a step (all threads): on a shared CPU machine it is
              far less sensitive to other processes than wall time, and a load-average warning is
              printed when the machine was busy.
  clips/s,    on CUDA: ``batch / step time``, and model FLOPs utilisation: ``2 x GMACs / step
  MFU         time`` against the card's dense bf16 peak, looked up from the device name
              (:data:`BF16_PEAK_TFLOPS`; other cards print "peak unknown").
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
  targets     against the official math: >= 1.25x its speed at the same work; on H100/H200:
              >= 40% MFU in bf16; AIM <= 0.5x the peak memory of the full fine-tune
              (``timesformer``). The time ratio to the full fine-tune is printed, not judged.

Default run: ViT-B/16, batch 2 x 8 frames x 224^2; ``--steps`` 3 on CPU (about 5 minutes on 2
cores for the three variants) and 20 on CUDA. Pass ``--json PATH`` to also write the results.

On a shared CPU machine, ``--threads 1`` gives the steadiest CPU times: with more threads than
free cores, OpenMP threads spin while waiting for each other, which counts as CPU time too (measured
here: a tiny-size step took 0.3 s of CPU on one thread and 6 s on two under a load of 17). bf16 on
a CPU without native bf16 (AVX2 only, e.g. AMD Zen 3) runs PyTorch's fallback bf16 GEMM, measured
at 1-19 GFLOP/s against about 75 in fp32 on one Zen 3 core: there bf16 is a correctness mode, not
a fast one, and a full-size bf16 step takes tens of minutes; compare at a small size.

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
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("aim", "timesformer", "finetuned_space_only")
CKPT = "aim+ckpt"
MEM_TARGET = 0.5                 # AIM's peak memory against the full fine-tune's
OFFICIAL_TARGET = 1.25           # our step's speed against the official math's, same work
MFU_TARGET = 0.40                # on H100/H200, bf16
PRECISIONS = ("fp32", "bf16")

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets; matched on the
# CUDA device name in this order (PCIe/NVL before the SXM H100, GH200 before H200).
BF16_PEAK_TFLOPS = (
    (r"\bH100\b.*\bPCIe\b", 756.0), (r"\bH100\b.*\bNVL\b", 835.0), (r"\bH100\b", 989.0),
    (r"\bGH200\b", 989.0), (r"\bH200\b", 989.0), (r"\bB200\b", 2250.0), (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or ``None`` for a card not in :data:`BF16_PEAK_TFLOPS`."""
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, device_name)),
                None)


def _precisions(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected fp32, bf16 or fp32,bf16, got {text!r}")
    return names


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per model (default 3 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbone", default="ViT-B-16", help="open_clip model name")
    p.add_argument("--precision", type=_precisions, default=None,
                   help="fp32, bf16, or fp32,bf16 with --against-official (its default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--checkpointing", nargs="?", const=0, type=int, default=None, metavar="N",
                   help="also run AIM with activation checkpointing: every block, or N blocks")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated subset of {VARIANTS + (CKPT,)} or {CKPT}:N "
                        f"(default: all three)")
    p.add_argument("--against-official", action="store_true",
                   help="alternate steps of our AIM and the official math in one process")
    p.add_argument("--compile", action="store_true",
                   help="with --against-official: also time our model under torch.compile")
    p.add_argument("--profile", action="store_true",
                   help="with --against-official: split one more step of each by kind of op")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 20 if args.device == "cuda" else 3
    if args.precision is None:
        args.precision = list(PRECISIONS) if args.against_official else ["fp32"]
    if len(args.precision) > 1 and not args.against_official:
        p.error("--precision: the variant comparison takes one precision (fp32 or bf16)")
    for flag in ("compile", "profile"):
        if getattr(args, flag) and not args.against_official:
            p.error(f"--{flag}: only with --against-official")
    return args


# ----------------------------------------------------------------------------------------------
# One step, timed
# ----------------------------------------------------------------------------------------------

def make_step(model, optimizer, clips, labels, precision: str,
              forward: Callable | None = None) -> Callable[[], float]:
    """Forward (under bf16 autocast for ``bf16``), loss, backward, optimiser step; returns the
    loss. ``forward(clips)`` defaults to ``model(clips)``."""
    import torch
    import torch.nn.functional as F

    forward = forward or model
    autocast = torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        with autocast:
            loss = F.cross_entropy(forward(clips).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # also synchronises CUDA

    return step


def timed(step: Callable[[], float]) -> tuple[float, float]:
    """Wall and process CPU seconds of one step (the step's ``.item()`` synchronises CUDA)."""
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - t0, time.process_time() - c0


def _setup_torch(args: argparse.Namespace):
    import torch

    logging.getLogger("aim_core").setLevel(logging.ERROR)  # "random init" warning is expected here
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.ones(64, 64) @ torch.ones(64, 64)  # initialise the CPU kernels/thread pool
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)
    return device


def _batch(args: argparse.Namespace, device, num_classes: int):
    import torch

    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device)
    return x, torch.randint(0, num_classes, (args.batch,), device=device)


def _gpu_rates(args: argparse.Namespace, step_s: float, train_gmacs: float) -> dict:
    """clips/s, and MFU against the card's dense bf16 peak where it is known."""
    import torch

    name = torch.cuda.get_device_name()
    peak = bf16_peak_tflops(name)
    achieved = 2 * train_gmacs * 1e9 / step_s / 1e12
    return dict(gpu=name, clips_per_s=args.batch / step_s, achieved_tflops=achieved,
                peak_tflops=peak, mfu=None if peak is None else achieved / peak)


def mfu_text(r: dict, precision: str) -> str:
    """One line of GPU rates (:func:`_gpu_rates`), judged against the MFU target on H100/H200."""
    if r["mfu"] is None:
        mfu = "peak unknown"
    else:
        mfu = f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s bf16 dense"
        if precision == "bf16" and re.search(r"\bH[12]00\b", r["gpu"]):
            mfu += f" (target >= {100 * MFU_TARGET:.0f}%: "
            mfu += ("MET)" if r["mfu"] >= MFU_TARGET else "MISSED)")
    return (f"{r['clips_per_s']:.1f} clips/s, {r['achieved_tflops']:.1f} TFLOP/s, {mfu} "
            f"({r['gpu']})")


# ----------------------------------------------------------------------------------------------
# Against the official math: one process, steps alternated
# ----------------------------------------------------------------------------------------------

def _official_cfg(args: argparse.Namespace):
    from aim_core.config import BackboneConfig, ModelConfig

    backbone = BackboneConfig(source="open_clip", name=args.backbone, pretrained=None,
                              act="quick_gelu")
    return ModelConfig(variant="aim", backbone=backbone, num_frames=args.frames,
                       image_size=args.size, num_classes=400, drop_path=0.0, head_dropout=0.0)


def _contenders(args: argparse.Namespace, device, precision: str) -> tuple[dict, dict, float]:
    """name -> step for ours, the official twin and (``--compile``) ours compiled; first losses;
    compile seconds."""
    import copy

    import torch

    from aim_core.backbones import build_model
    from aim_core.model import compile_model
    from benchmarks.official_math import official_forward, official_twin

    torch.manual_seed(0)
    cfg = _official_cfg(args)
    ours = build_model(cfg, device=device).train()
    twin = official_twin(ours)
    x, y = _batch(args, device, cfg.num_classes)

    def adamw(model):
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                                 weight_decay=0.05)

    steps = {"ours": make_step(ours, adamw(ours), x, y, precision),
             "official": make_step(twin, adamw(twin), x, y, precision,
                                   forward=lambda clips: official_forward(twin, clips))}
    compiled_model = compile_model(copy.deepcopy(ours)) if args.compile else None
    first = {name: step() for name, step in steps.items()}   # the losses at initialisation
    compile_s = 0.0
    if compiled_model is not None:
        steps["ours+compile"] = make_step(compiled_model, adamw(compiled_model), x, y, precision)
        compile_s, _ = timed(steps["ours+compile"])           # its first step compiles
    return steps, first, compile_s


def run_against_official(args: argparse.Namespace, precision: str) -> dict:
    """Warm-up and timed rounds; each round runs every contender once, in a rotating order."""
    from benchmarks.step_profile import profile_split

    device = _setup_torch(args)
    steps, first, compile_s = _contenders(args, device, precision)
    names = list(steps)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    for round_ in range(args.warmup + args.steps):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            measured = timed(steps[name])
            if round_ >= args.warmup:
                times[name].append(measured)
    load.append(os.getloadavg()[0])
    splits = {name: profile_split(step) for name, step in steps.items()} if args.profile else {}
    out = {name: dict(wall_s=statistics.median(w for w, _ in t),
                      cpu_s=statistics.median(c for _, c in t), times=t)
           for name, t in times.items()}
    return dict(precision=precision, first_loss=first, models=out, compile_s=compile_s,
                max_load=max(load), profile=splits)


def print_against_official(args: argparse.Namespace, runs: list[dict]) -> None:
    import torch

    from benchmarks.step_profile import split_lines

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n")
    header = f"{'precision':<10s} {'model':<14s} {'step (s)':>9s} {'cpu (s)':>8s}  first loss"
    print(header + "\n" + "-" * len(header))
    for run in runs:
        for name, m in run["models"].items():
            loss = run["first_loss"].get(name)
            print(f"{run['precision']:<10s} {name:<14s} {m['wall_s']:9.3f} {m['cpu_s']:8.2f}  "
                  + ("" if loss is None else f"{loss:.6f}"))
    print()
    for run in runs:
        ref = run["models"]["official"]
        for name in [n for n in run["models"] if n != "official"]:
            m = run["models"][name]
            wall, cpu = ref["wall_s"] / m["wall_s"], ref["cpu_s"] / m["cpu_s"]
            judged = cpu if args.device == "cpu" else wall
            verdict = "MET" if judged >= OFFICIAL_TARGET else "MISSED"
            print(f"{run['precision']}: {name} is {wall:.2f}x as fast as the official math "
                  f"(wall), {cpu:.2f}x (cpu time); target >= {OFFICIAL_TARGET}x "
                  f"({'cpu' if args.device == 'cpu' else 'wall'} time): {verdict}")
        if run["profile"]:
            print("\n".join(["", *split_lines(run["precision"], run["profile"]), ""]))
        if run["compile_s"]:
            print(f"{run['precision']}: torch.compile's first step took {run['compile_s']:.1f} s")
        if args.device == "cuda":
            gmacs = _train_gmacs(_official_cfg(args), args.batch)
            for name, m in run["models"].items():
                rates = _gpu_rates(args, m["wall_s"], gmacs)
                print(f"{run['precision']}: {name} {mfu_text(rates, run['precision'])}")
    _warn_if_busy(args, max(r["max_load"] for r in runs))


def _train_gmacs(cfg, batch: int) -> float:
    from aim_core.accounting import model_cost

    return model_cost(cfg).train_gmacs_per_clip * batch  # meta device: no memory


def _warn_if_busy(args: argparse.Namespace, load: float) -> None:
    if args.device == "cpu" and load > (os.cpu_count() or 1):
        threads = args.threads or os.cpu_count() or 1
        print(f"WARNING: 1-min load average reached {load:.1f} on {os.cpu_count()} CPUs during the "
              f"run: wall times are inflated by other processes; 'cpu (s)' (process CPU time, all "
              f"threads, median) is the steadier comparison"
              + ("" if threads == 1 else ", and steadiest with --threads 1 (busy threads spin "
                 "while they wait for each other, which also counts as CPU time)"))


# ----------------------------------------------------------------------------------------------
# Variants: one process each
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


def _variant_cfg(args: argparse.Namespace, name: str):
    from aim_core.config import BackboneConfig, ModelConfig

    backbone = BackboneConfig(source="open_clip", name=args.backbone, pretrained=None)
    ckpt = _checkpointed_blocks(name)
    return ModelConfig(variant="aim" if ckpt is not None else name, backbone=backbone,
                       num_frames=args.frames, image_size=args.size, num_classes=400,
                       grad_checkpointing=False if ckpt is None else (ckpt or True))


def run_variant(args: argparse.Namespace, name: str) -> dict:
    import torch

    from aim_core.backbones import build_model, resolve_spec
    from aim_core.model import count_parameters

    cfg = _variant_cfg(args, name)
    resolve_spec(cfg.backbone)  # import open_clip before the memory baseline
    device = _setup_torch(args)
    cuda = device.type == "cuda"
    rss_start = _rss_bytes()

    torch.manual_seed(0)
    model = build_model(cfg, device=device).train()
    total, tunable = count_parameters(model)
    opt = torch.optim.AdamW(model.tunable_parameters(), lr=3e-4, weight_decay=0.05)
    x, y = _batch(args, device, cfg.num_classes)
    step = make_step(model, opt, x, y, args.precision[0])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    load = [os.getloadavg()[0]]
    for _ in range(args.warmup):
        step()
    times, cpu_times = zip(*(timed(step) for _ in range(args.steps)))
    load.append(os.getloadavg()[0])
    train_gmacs = _train_gmacs(cfg, args.batch)
    rss_growth = _maxrss_bytes() - rss_start
    peak, model_bytes = _peak_memory(model, opt, step, [x, y], cuda)
    result = dict(variant=name, total_params=total, tunable_params=tunable, times=times,
                  median_s=statistics.median(times), min_s=min(times), cpu_times=cpu_times,
                  median_cpu_s=statistics.median(cpu_times), max_load=max(load), peak_bytes=peak,
                  above_model_bytes=peak - model_bytes, rss_growth_bytes=rss_growth,
                  train_gmacs=train_gmacs, device=str(device), threads=torch.get_num_threads(),
                  torch=torch.__version__)
    if cuda:
        result.update(_gpu_rates(args, result["median_s"], train_gmacs))
    return result


def _peak_memory(model, opt, step: Callable[[], float], batch: list, cuda: bool) -> tuple[int, int]:
    """(peak bytes of the step, bytes of weights, buffers and batch)."""
    import torch

    from benchmarks.memory import LiveTensorPeak, storage_bytes

    resident = [*model.parameters(), *model.buffers(), *batch]
    model_bytes = storage_bytes(resident)
    if cuda:
        return torch.cuda.max_memory_allocated(), model_bytes
    # one more, untimed step under the live-tensor tracker (it slows every op down)
    opt_state = [t for state in opt.state.values() for t in state.values()
                 if isinstance(t, torch.Tensor)]
    with LiveTensorPeak(existing=resident + opt_state) as live:
        step()
    return model_bytes + storage_bytes(opt_state) + live.peak, model_bytes


def _child_argv(args: argparse.Namespace, name: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--only", name,
            "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--batch", str(args.batch), "--frames", str(args.frames), "--size", str(args.size),
            "--backbone", args.backbone, "--precision", args.precision[0]]
    return argv + (["--threads", str(args.threads)] if args.threads else [])


def _spawn(args: argparse.Namespace, name: str) -> dict:
    proc = subprocess.run(_child_argv(args, name), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _variant_names(args: argparse.Namespace) -> list[str]:
    names = list(VARIANTS)
    if args.checkpointing is not None:
        names.append(f"{CKPT}:{args.checkpointing}" if args.checkpointing else CKPT)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",")]
        bad = [v for v in names if v not in VARIANTS and _checkpointed_blocks(v) is None]
        if bad:
            raise SystemExit(f"--variants: unknown {bad}; choose from {VARIANTS + (CKPT,)}")
    return names


def print_variants(args: argparse.Namespace, results: dict[str, dict]) -> None:
    first = next(iter(results.values()))
    mem_kind = ("cuda max_memory_allocated" if args.device == "cuda"
                else "peak bytes of live tensors (LiveTensorPeak)")
    print(f"\ntorch {first['torch']}, {first['threads']} threads; memory = {mem_kind}\n")
    header = (f"{'variant':<22s} {'tunable':>9s} {'total':>9s} {'GMACs':>7s} {'step (s)':>9s} "
              f"{'cpu (s)':>8s} {'peak GiB':>9s} {'above model':>12s} {'RSS GiB':>8s}")
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        print(f"{name:<22s} {r['tunable_params'] / 1e6:8.2f}M {r['total_params'] / 1e6:8.2f}M "
              f"{r['train_gmacs']:7.0f} {r['median_s']:9.3f} {r['median_cpu_s']:8.2f} "
              f"{_gib(r['peak_bytes']):>9s} {_gib(r['above_model_bytes']):>12s} "
              f"{_gib(r['rss_growth_bytes']):>8s}")
    if args.device == "cuda":
        print()
        for name, r in results.items():
            print(f"{name}: {mfu_text(r, args.precision[0])}")
    _warn_if_busy(args, max(r["max_load"] for r in results.values()))
    if "timesformer" in results:
        _print_against_full_finetune(args, results)


def _print_against_full_finetune(args: argparse.Namespace, results: dict[str, dict]) -> None:
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
        m_ratio = results[name]["peak_bytes"] / ref["peak_bytes"]
        print(f"memory target for {name} (<= {MEM_TARGET}x the full fine-tune's peak) on "
              f"{args.device}/{args.precision[0]}: {m_ratio:.2f}x "
              f"{'HOLDS' if m_ratio <= MEM_TARGET else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.only:
        print("RESULT " + json.dumps(run_variant(args, args.only)), flush=True)
        return 0
    setting = (f"{args.backbone} (random init), batch {args.batch} x {args.frames} frames x "
               f"{args.size}^2, device {args.device}, {args.warmup} warm-up + {args.steps} timed")
    if args.against_official:
        print(f"train step against the official math: {setting} rounds, steps alternated, "
              f"QuickGELU, no drop path", flush=True)
        runs = []
        for precision in args.precision:
            runs.append(run_against_official(args, precision))
            print(f"  {precision} done", flush=True)
        print_against_official(args, runs)
        results: dict = {"against_official": runs}
    else:
        print(f"train step: {setting} steps, {args.precision[0]}, one process per variant",
              flush=True)
        results = {}
        for name in _variant_names(args):
            t0 = time.perf_counter()
            results[name] = r = _spawn(args, name)
            print(f"  {name:<22s} done in {time.perf_counter() - t0:5.1f} s "
                  f"(steps: {', '.join(f'{t:.2f}' for t in r['times'])} s)", flush=True)
        print_variants(args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
