"""The benchmarks measure what they say: live-tensor memory on the CPU, and a runnable step benchmark."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from aim_core.backbones import build_model
from aim_core.config import BackboneConfig, ModelConfig
from benchmarks.loader import SessionCpu, process_kind, split_costs
from benchmarks.memory import LiveTensorPeak, storage_bytes
from benchmarks.official_math import official_forward, official_names, official_twin
from benchmarks.step_profile import KINDS, profile_split
from benchmarks.train_step import bf16_peak_tflops, make_step, mfu_text

MB = 2**20
ROOT = Path(__file__).resolve().parents[1]


def test_the_peak_counts_tensors_alive_at_the_same_time_and_forgets_freed_ones():
    with LiveTensorPeak() as live:
        a = torch.empty(8 * MB, dtype=torch.uint8)
        b = torch.empty(4 * MB, dtype=torch.uint8)
        del a
        c = torch.empty(2 * MB, dtype=torch.uint8)
        assert live.live == 6 * MB
        view = b[: MB].view(torch.int32)          # a view is the same memory
    assert live.peak == 12 * MB and live.live == 6 * MB
    del b, c, view


def test_writing_into_existing_tensors_is_not_new_memory():
    weights = torch.zeros(4 * MB, dtype=torch.uint8)
    with LiveTensorPeak(existing=[weights]) as live:
        weights.add_(1)
        torch.add(weights, 1, out=weights)
    assert live.peak == 0


def test_storage_bytes_counts_shared_storage_once():
    t = torch.empty(MB, dtype=torch.uint8)
    assert storage_bytes([t, t[:10], t.view(torch.int16)]) == MB


def test_backward_memory_is_tracked_too():
    x = torch.randn(256, 1024, requires_grad=True)
    with LiveTensorPeak(existing=[x]) as live:
        (x.exp() * 2).sum().backward()
    assert live.peak >= 2 * x.nbytes                 # exp's saved output and x's gradient


def official_geometry_cfg(**changes) -> ModelConfig:
    """A small CLIP-style AIM that the official math covers: QuickGELU, 64-wide heads."""
    backbone = BackboneConfig(source="tiny", name="tiny", width=128, layers=2, heads=2,
                              patch_size=8, act="quick_gelu")
    return ModelConfig(backbone=backbone, num_classes=5, num_frames=4, image_size=32,
                       drop_path=0.0, head_dropout=0.0, **changes)


def test_the_official_variant_trains_the_same_tensors_as_ours():
    ours = build_model(official_geometry_cfg())
    twin = official_twin(ours)
    names = official_names(twin)
    assert set(names) == set(ours.state_dict())
    ours_tunable = {names[n] for n, p in ours.named_parameters() if p.requires_grad}
    assert ours_tunable == {n for n, p in twin.named_parameters() if p.requires_grad}
    assert any("T_Adapter" in n for n in ours_tunable) and "cls_head.fc_cls.weight" in ours_tunable
    assert "backbone.transformer.resblocks.0.attn.in_proj_weight" not in ours_tunable


@pytest.mark.parametrize("temporal_adapters", [1, 2])
def test_the_official_variant_starts_from_our_weights_with_the_same_loss_and_gradients(
        temporal_adapters):
    from aim_core.config import AdapterConfig

    torch.manual_seed(0)
    ours = build_model(official_geometry_cfg(adapter=AdapterConfig(
        temporal_adapters=temporal_adapters))).train()
    twin = official_twin(ours)
    x = torch.randn(2, 3, 4, 32, 32)
    y = torch.tensor([1, 3])
    losses = []
    for model, forward in ((ours, ours), (twin, lambda c: official_forward(twin, c))):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses.append([make_step(model, opt, x, y, "fp32", forward=forward)() for _ in range(3)])
    # the first loss is at initialisation; the next two follow identical AdamW updates
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    assert losses[0][0] != losses[0][2]


def test_the_official_variant_refuses_what_the_official_math_does_not_cover():
    with pytest.raises(ValueError, match="official math covers full AIM"):
        official_twin(build_model(official_geometry_cfg(variant="timesformer")))


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA A10G", None), ("Tesla V100-SXM2-16GB", None)])
def test_mfu_uses_the_dense_bf16_peak_of_the_named_card(name, peak):
    assert bf16_peak_tflops(name) == peak


def test_mfu_is_judged_against_40_percent_only_for_bf16_on_hopper_cards():
    def rates(gpu, mfu):
        return dict(gpu=gpu, mfu=mfu, peak_tflops=989.0, clips_per_s=500.0, achieved_tflops=420.0)

    assert mfu_text(rates("NVIDIA H100 80GB HBM3", 0.42), "bf16").endswith(
        "(target >= 40%: MET) (NVIDIA H100 80GB HBM3)")
    assert "MISSED" in mfu_text(rates("NVIDIA H200", 0.30), "bf16")
    assert "target" not in mfu_text(rates("NVIDIA H200", 0.30), "fp32")
    assert "peak unknown" in mfu_text(rates("NVIDIA A10G", None), "bf16")


def test_the_profile_split_puts_every_op_of_a_step_under_one_kind():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.LayerNorm(256),
                                torch.nn.Linear(256, 8))
    opt = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(512, 64), torch.randint(0, 8, (512,))
    split = profile_split(make_step(model, opt, x, y, "fp32"), top=1000)  # every "rest" op
    assert split["total_s"] == pytest.approx(sum(split[f"{k}_s"] for k in KINDS))
    assert split["matmul_s"] > 0 and split["optimizer_s"] > 0 and split["attention_s"] == 0
    rest_ops = [op for op, _ in split["top_rest"]]
    assert "aten::native_layer_norm" in rest_ops or "aten::native_layer_norm_backward" in rest_ops
    assert not any(op in ("aten::mm", "aten::addmm") or "AdamW.step" in op for op in rest_ops)


@pytest.mark.slow
def test_the_train_step_benchmark_runs_and_compares_the_variants(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--device", "cpu",
         "--size", "32", "--frames", "2", "--batch", "1", "--steps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "aim/timesformer: step GMACs 0.72x" in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"aim", "timesformer", "finetuned_space_only"}
    aim, full = results["aim"], results["timesformer"]
    assert aim["tunable_params"] < 0.1 * full["tunable_params"]
    # no weight gradients or AdamW state for the frozen backbone
    assert aim["peak_bytes"] < full["peak_bytes"] - 3 * 4 * 80e6


@pytest.mark.slow
def test_the_ingest_benchmark_runs_and_prints_its_table():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--files", "3", "--frames", "140",
         "--repeats", "1"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("c/s = clips per second\n", 1)[1].splitlines()
    assert table[0].split("|")[0].strip() == "GOP" and len(table) == 2 + 2   # header, rule, 2 GOPs
    assert "skipped" not in proc.stdout and "(c) Ray Data, 2 CPU" in proc.stdout


def test_the_loader_benchmark_splits_ray_cpu_into_per_clip_by_the_second_and_per_epoch():
    """3 ms per clip, 0.2 cores while an execution runs and 0.4 s per epoch, above 0.05 idle
    cores, seen at two clip rates and two epoch sizes: the fit recovers all three, so the cost per
    clip at any rate and epoch size follows."""
    def run(clips_per_s: float, clips: int) -> dict:
        epochs = [{"clips": clips, "seconds": clips / clips_per_s + jitter,
                   "ray_cpu_s": clips * 0.003 + 0.4 + (0.2 + 0.05) * (clips / clips_per_s
                                                                      + jitter)}
                  for jitter in (0.0, 0.3)]
        return {"epochs": epochs, "ray_idle_cores": 0.05}

    costs = split_costs([run(25.0, 86), run(12.0, 86), run(25.0, 43)])
    assert costs == pytest.approx({"per_clip_ms": 3.0, "cores": 0.2, "per_epoch_s": 0.4})


def test_the_loader_benchmark_fit_keeps_every_cost_non_negative():
    """Noise can make the free fit put a cost below zero; the fit then holds it at zero."""
    epochs = [{"clips": 86, "seconds": s, "ray_cpu_s": 86 * 0.05 - 0.06 * s} for s in (6, 15)]
    costs = split_costs([{"epochs": epochs, "ray_idle_cores": 0.0}])
    assert min(costs.values()) >= 0 and costs["per_clip_ms"] > 0


def test_the_loader_benchmark_counts_cpu_from_reads_wholly_outside_a_window(tmp_path):
    """A sample whose reads straddle an edge of the window is not used: the window's CPU is then
    at least what was spent inside it, never what one slow sample happened to read early."""
    cpu = SessionCpu(str(tmp_path))
    cpu.kinds = {7: "ray::MapBatches"}
    cpu.samples = [(0.0, 0.5, {7: 1.0}), (0.9, 1.4, {7: 2.0}), (1.5, 1.6, {7: 3.0})]
    assert cpu.by_kind(0.6, 1.2) == {"ray::MapBatches": 2.0}


def test_a_ray_worker_seen_before_it_renames_itself_counts_as_a_task_process(tmp_path):
    """Ray starts a worker as ``python -u .../default_worker.py``; it becomes ``ray::IDLE`` only
    once running. Seen that early, it must not land among the other Python processes."""
    script = tmp_path / "default_worker.py"
    script.write_text("import time\ntime.sleep(30)\n")
    worker = subprocess.Popen([sys.executable, "-u", str(script), "--session-dir=x"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_kind(psutil.Process(worker.pid)) == "ray::IDLE"
        assert process_kind(psutil.Process(other.pid)) != "ray::IDLE"
    finally:
        for p in (worker, other):
            p.kill()
            p.wait()


def test_a_process_without_a_command_line_gets_no_kind_of_its_own():
    """An exiting worker's command line is empty for a moment and its name is cut to 15
    characters (``ray::RayTrainWo``); it keeps the kind it had. Kernel threads look the same."""
    bare = next((p for p in psutil.process_iter() if _no_cmdline(p)), None)
    if bare is None:
        pytest.skip("no process without a command line is visible here")
    assert process_kind(bare) is None


def _no_cmdline(process) -> bool:
    try:
        return process.cmdline() == []
    except psutil.Error:
        return False


@pytest.mark.slow
def test_the_loader_benchmark_measures_raw_and_prepared_storage_in_train_workers(tmp_path):
    out = tmp_path / "loader.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--videos", "4", "--seconds",
         "1.5", "--epochs", "2", "--workers", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["storage"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"raw (x264 defaults)", "prepared (default)"}
    for row in rows.values():
        assert row["clips_per_s"] > 0 and row["decode_ms"] > 0 and row["plain_ms"] > 0
        assert row["train_ms"] > 0 and row["ray_ms"] > row["decode_ms"]   # Ray's include the tasks
        # beyond idle: less than as measured (differences, so only finite is certain)
        assert all(math.isfinite(row[k]) and row[k] <= row[k.replace("_beyond_idle", "")]
                   for k in ("train_beyond_idle_ms", "ray_beyond_idle_ms"))
        assert row["ray_idle_cores"] > 0
    assert "| raw (x264 defaults) |" in proc.stdout and "ray::SplitCoordinator" in proc.stdout
    # keyframe-dense storage is bigger than x264's defaults: the price of cheap seeks
    assert rows["prepared (default)"]["bytes"] > rows["raw (x264 defaults)"]["bytes"]


@pytest.mark.slow
def test_the_ray_data_overhead_benchmark_splits_the_cpu_of_moving_free_clips_by_process(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ray_data_overhead.py"), "--clips", "16",
         "--videos-per-task", "8", "--consumer-ms", "0", "--epochs", "2", "--no-store-check",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["clips"] == 16 and row["clips_per_s"] > 0
    # the clips cost nothing to make, so every process's CPU is Ray's, the decode tasks' included
    assert row["by_kind_ms"]["coordinator"] > 0 and row["by_kind_ms"]["task processes"] > 0
    assert row["ray_ms"] == pytest.approx(sum(row["by_kind_ms"].values()))
    assert "| 8 | data-bound |" in proc.stdout
    assert json.loads(out.read_text())["block_write"] == {}      # two more clusters: not here


@pytest.mark.slow
def test_the_serve_benchmark_compares_one_model_with_three_sharing_a_backbone(tmp_path):
    out = tmp_path / "serve.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--requests", "4", "--clients",
         "1,2", "--pretrain-steps", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| served models | max batch | clients | requests/s | p50 | p99 |" in proc.stdout
    assert "| 8 | 173.5M (0.65 GiB) | 774.1M (2.88 GiB) | 0.22x |" in proc.stdout   # ViT-B/16
    figures = json.loads(out.read_text())
    assert [(r["models"], r["max_batch_size"], r["clients"]) for r in figures["rows"]] == [
        (1, 8, 1), (1, 8, 2), (1, 1, 2), (3, 8, 1), (3, 8, 2)]
    assert all(r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] for r in figures["rows"])
    assert all(ms > 0 for ms in figures["in_process_cpu_ms"].values())
    one, three = figures["memory"]["1"], figures["memory"]["3"]
    assert one["weight_bytes"] == one["separate_bytes"]
    assert three["separate_bytes"] == 3 * one["weight_bytes"]
    assert one["weight_bytes"] < three["weight_bytes"] < 1.5 * one["weight_bytes"]


@pytest.mark.slow
def test_the_gpu_check_runs_its_checks_as_cpu_stand_ins_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--json",
                           str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(out.read_text())}
    assert list(checks) == ["environment", "step", "against official", "compiled = eager",
                            "ray train"]
    assert all(c["status"] == "stand-in" for c in checks.values())
    assert "GPU NOT CHECKED" in proc.stdout
    assert len(checks["ray train"]["detail"]["epochs"]) == 2


@pytest.mark.slow
def test_the_step_benchmark_against_the_official_math_starts_from_the_same_loss(tmp_path):
    out = tmp_path / "official.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--against-official",
         "--device", "cpu", "--backbone", "ViT-B-32", "--size", "32", "--frames", "2",
         "--batch", "1", "--warmup", "1", "--steps", "1", "--threads", "1", "--profile",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(out.read_text())["results"]["against_official"]
    assert [r["precision"] for r in runs] == ["fp32", "bf16"]
    fp32 = runs[0]
    assert fp32["first_loss"]["ours"] == pytest.approx(fp32["first_loss"]["official"], abs=1e-5)
    assert set(fp32["models"]) == {"ours", "official"}
    assert "fp32: ours is" in proc.stdout and "as fast as the official math" in proc.stdout
    split = fp32["profile"]["official"]
    assert set(fp32["profile"]) == {"ours", "official"} and split["matmul_s"] > 0
    assert "largest 'rest' ops" in proc.stdout
