"""GPU readiness in one call: the step benchmark on CUDA and a two-epoch tiny training through
Ray Train on the GPU (bf16 autocast, NCCL), with a plain verdict on what failed.

Run: ``.venv/bin/python benchmarks/gpu_check.py [--json PATH]`` (a few minutes on an H100/H200).

Checks, each in its own subprocess with a time limit, so one failure cannot hide the others:

- ``environment``: torch, CUDA, the card, bf16 support, NCCL, the card's dense bf16 peak;
- ``step``: ``train_step.py --device cuda --variants aim --precision bf16`` at a batch that fills
  the card (clips/s, MFU against the 40% target on H100/H200);
- ``against official``: ``train_step.py --against-official --compile`` in bf16 and fp32 (the
  speed-up over the official math; torch.compile on the GPU);
- ``compiled = eager``: compiled and eager logits and gradients agree on the GPU in bf16;
- ``ray train``: ``aim-video synth`` + ``aim-video train`` of the tiny AIM for two epochs with
  ``run.use_gpu=true``, ``optim.precision=bf16``, ``NCCL_DEBUG=INFO`` (the log must show bf16
  epochs and NCCL initialising).

Without CUDA every check still runs, as a CPU stand-in at a tiny size (and without the NCCL
requirement) so that the script itself is tested on any machine; the summary says which checks
only ran as stand-ins, and that the GPU was not checked. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEP_BENCH = ROOT / "benchmarks" / "train_step.py"
# tiny sizes for the CPU stand-ins; one thread, as busy threads spin on a shared machine
CPU_STAND_IN = ["--size", "32", "--frames", "2", "--backbone", "ViT-B-32", "--threads", "1"]
CLASSES = ("move_left_to_right", "move_right_to_left", "blue_circle", "red_square")


@dataclass
class Check:
    name: str
    status: str = "ok"            # ok | FAILED | stand-in (ran on the CPU, GPU not checked)
    seconds: float = 0.0
    summary: str = ""
    detail: dict = field(default_factory=dict)


def _run(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Exit status and combined output of a subprocess (124 on time-out)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep
                + os.environ.get("PYTHONPATH", ""), **(env or {})}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=full_env)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return 124, out + f"\n(timed out after {timeout:.0f} s)"
    return proc.returncode, proc.stdout + proc.stderr


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------

def check_environment(cuda: bool) -> Check:
    import torch
    import torch.distributed as dist

    from benchmarks.train_step import bf16_peak_tflops

    detail = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
              "nccl_available": dist.is_available() and dist.is_nccl_available()}
    if not cuda:
        return Check("environment", "stand-in", summary="no CUDA device: GPU checks run as CPU "
                     "stand-ins", detail=detail)
    name = torch.cuda.get_device_name()
    peak = bf16_peak_tflops(name)
    detail.update(device=name, capability=torch.cuda.get_device_capability(),
                  bf16=torch.cuda.is_bf16_supported(), peak_tflops=peak,
                  memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    problems = [p for p, bad in (("no bf16", not detail["bf16"]),
                                 ("no NCCL", not detail["nccl_available"])) if bad]
    return Check("environment", "FAILED" if problems else "ok",
                 summary=f"{name}, bf16 peak {peak or 'unknown'} TFLOP/s"
                 + (f"; {', '.join(problems)}" if problems else ""), detail=detail)


def _step_json(argv: list[str], timeout: float) -> tuple[int, str, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "step.json"
        code, text = _run([sys.executable, str(STEP_BENCH), *argv, "--json", str(out)], timeout)
        results = json.loads(out.read_text())["results"] if out.exists() else {}
    return code, text, results


def check_step(cuda: bool, batch: int) -> Check:
    size = ([] if cuda else CPU_STAND_IN)
    argv = ["--device", "cuda" if cuda else "cpu", "--variants", "aim", "--precision",
            "bf16" if cuda else "fp32", "--batch", str(batch if cuda else 1),
            "--warmup", "5" if cuda else "1", "--steps", "20" if cuda else "1", *size]
    code, text, results = _step_json(argv, timeout=600)
    if code or "aim" not in results:
        return Check("step", "FAILED", summary=f"train_step.py exited {code}", detail={
            "log": _tail(text)})
    r = results["aim"]
    if not cuda:
        return Check("step", "stand-in", summary=f"CPU, tiny size: {r['median_s']:.2f} s/step",
                     detail=r)
    mfu = r.get("mfu")
    verdict = ("peak unknown" if mfu is None else
               f"MFU {100 * mfu:.1f}% ({'meets' if mfu >= 0.40 else 'below'} the 40% target)")
    return Check("step", "ok", summary=f"batch {batch}, bf16: {r['clips_per_s']:.0f} clips/s, "
                 f"{verdict}", detail=r)


def check_against_official(cuda: bool) -> Check:
    size = (["--batch", "8", "--warmup", "3", "--steps", "10"] if cuda else
            [*CPU_STAND_IN, "--batch", "1", "--warmup", "1", "--steps", "1"])
    argv = ["--device", "cuda" if cuda else "cpu", "--against-official",
            "--precision", "bf16,fp32" if cuda else "fp32", *size, *(["--compile"] if cuda else [])]
    code, text, results = _step_json(argv, timeout=900)
    runs = results.get("against_official", [])
    if code or not runs:
        return Check("against official", "FAILED", summary=f"train_step.py exited {code}",
                     detail={"log": _tail(text)})
    parts = []
    for run in runs:
        ref = run["models"]["official"]["wall_s"]
        parts += [f"{run['precision']} {name} {ref / m['wall_s']:.2f}x"
                  for name, m in run["models"].items() if name != "official"]
    return Check("against official", "ok" if cuda else "stand-in",
                 summary="speed-up over the official math: " + ", ".join(parts),
                 detail={"runs": runs})


def check_compiled_equals_eager(cuda: bool) -> Check:
    code, text = _run([sys.executable, str(Path(__file__).resolve()), "--compile-child",
                       "cuda" if cuda else "cpu"], timeout=600)
    line = next((ln for ln in text.splitlines() if ln.startswith("COMPILE ")), None)
    if code or line is None:
        return Check("compiled = eager", "FAILED", summary=f"exit {code}",
                     detail={"log": _tail(text)})
    diffs = json.loads(line[len("COMPILE "):])
    return Check("compiled = eager", "ok" if cuda else "stand-in",
                 summary=f"largest relative difference: logits {diffs['logits']:.1e}, "
                 f"gradients {diffs['grads']:.1e}", detail=diffs)


def compile_child(device: str) -> int:
    """Compiled vs eager tiny AIM, bf16 autocast on ``device``: print the largest differences."""
    import copy

    import torch

    from aim_core.backbones import build_model
    from aim_core.config import BackboneConfig, ModelConfig
    from aim_core.model import compile_model

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=BackboneConfig(source="tiny", name="tiny", width=128, layers=2,
                                              heads=2, patch_size=8), num_classes=4,
                      num_frames=4, image_size=32, drop_path=0.0, head_dropout=0.0)
    eager = build_model(cfg, device=device).train()
    with torch.no_grad():
        for p in eager.tunable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    compiled = compile_model(copy.deepcopy(eager))
    x = torch.randn(2, 3, 4, 32, 32, device=device)
    outs = []
    for model in (eager, compiled):
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(x).float()
        out.square().sum().backward()
        outs.append(out)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()

    grads = max(rel(c.grad, e.grad) for e, c in zip(eager.parameters(), compiled.parameters())
                if e.grad is not None)
    diffs = {"logits": rel(outs[1], outs[0]), "grads": grads}
    print("COMPILE " + json.dumps(diffs), flush=True)
    return 0 if diffs["logits"] < 5e-2 and grads < 5e-2 else 1


def _training_config(work: Path, weights: Path, cuda: bool) -> dict:
    return {
        "model": {"variant": "aim", "num_classes": len(CLASSES), "num_frames": 8,
                  "image_size": 32, "drop_path": 0.0, "head_dropout": 0.0,
                  "backbone": {"source": "tiny", "name": "aim-tiny-vit", "pretrained": str(weights),
                               "width": 64, "layers": 3, "heads": 4, "patch_size": 8}},
        "data": {"root": str(work / "synthetic" / "videos"), "format": "folder",
                 "val_fraction": 0.25, "sampler": "uniform", "test_clips": 1, "test_crops": 1,
                 "short_side": 32, "crop_scale": [0.6, 1.0], "horizontal_flip": False},
        "optim": {"epochs": 2, "batch_size": 8, "per_device_batch": 8, "lr": 3e-3,
                  "warmup_epochs": 0, "precision": "bf16" if cuda else "fp32"},
        "run": {"name": "gpu-check", "storage_path": str(work / "runs"), "num_workers": 1,
                "use_gpu": cuda, "cpus_per_worker": 1, "max_failures": 0,
                "mlflow_experiment": "gpu-check",
                "tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
    }


def check_ray_train(cuda: bool) -> Check:
    import yaml

    from aim_core.tiny import pretrain_tiny_backbone

    with tempfile.TemporaryDirectory(prefix="aim-gpu-check-") as tmp:
        work = Path(tmp)
        code, text = _run([sys.executable, "-m", "pipelines.cli", "synth", str(work / "synthetic"),
                           "--videos-per-class", "6", "--size", "32", "--frames", "16",
                           "--classes", *CLASSES], timeout=300)
        if code:
            return Check("ray train", "FAILED", summary=f"aim-video synth exited {code}",
                         detail={"log": _tail(text)})
        weights = pretrain_tiny_backbone(work / "tiny_vit.pt", steps=40)
        config = work / "train.yaml"
        config.write_text(yaml.safe_dump(_training_config(work, weights, cuda)))
        code, text = _run([sys.executable, "-m", "pipelines.cli", "train", str(config)],
                          timeout=900, env={"NCCL_DEBUG": "INFO"})
    # Ray may forward a worker's line more than once (stdout and its log): one per epoch number
    epochs = list({ln.split("[aim-video train] epoch ", 1)[1].split("/", 1)[0]: ln
                   for ln in text.splitlines() if "[aim-video train] epoch " in ln}.values())
    precision = "bf16" if cuda else "fp32"
    problems = [p for p, bad in (
        (f"exit status {code}", code != 0),
        (f"{len(epochs)} of 2 epoch lines", len(epochs) != 2),
        (f"epochs not in {precision}", not all(f" {precision} " in ln for ln in epochs)),
        ("no NCCL initialisation in the log", cuda and "NCCL INFO" not in text)) if bad]
    if problems:
        return Check("ray train", "FAILED", summary="; ".join(problems),
                     detail={"log": _tail(text, 30)})
    return Check("ray train", "ok" if cuda else "stand-in",
                 summary=("GPU, bf16, NCCL: " if cuda else "CPU, fp32: ") + epochs[-1].split(
                     "[aim-video train] ", 1)[1][:110], detail={"epochs": epochs})


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def run_checks(batch: int) -> list[Check]:
    import torch

    cuda = torch.cuda.is_available()
    steps = [("environment", lambda: check_environment(cuda)),
             ("step", lambda: check_step(cuda, batch)),
             ("against official", lambda: check_against_official(cuda)),
             ("compiled = eager", lambda: check_compiled_equals_eager(cuda)),
             ("ray train", lambda: check_ray_train(cuda))]
    checks = []
    for name, run in steps:
        started = time.perf_counter()
        try:
            check = run()
        except Exception as exc:  # a check that crashes is a failed check, the others still run
            check = Check(name, "FAILED", summary=f"{type(exc).__name__}: {exc}")
        check.seconds = time.perf_counter() - started
        checks.append(check)
        print(f"[gpu-check] {check.name:<17s} {check.status:<9s} {check.seconds:6.1f} s  "
              f"{check.summary}", flush=True)
        if check.status == "FAILED" and "log" in check.detail:
            print("    " + check.detail["log"].replace("\n", "\n    "), flush=True)
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32, help="clips per step of the CUDA step check")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compile_child:
        return compile_child(args.compile_child)
    checks = run_checks(args.batch)
    failed = [c.name for c in checks if c.status == "FAILED"]
    stand_ins = [c.name for c in checks if c.status == "stand-in"]
    print()
    if failed:
        print(f"[gpu-check] FAILED: {', '.join(failed)}")
    if stand_ins:
        print(f"[gpu-check] GPU NOT CHECKED: no CUDA device here; {', '.join(stand_ins)} ran as "
              f"CPU stand-ins")
    if not failed and not stand_ins:
        print("[gpu-check] all checks passed on the GPU")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in checks], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
