"""The benchmarks measure what they say: live-tensor memory on the CPU, and a runnable step benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.memory import LiveTensorPeak, storage_bytes

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


@pytest.mark.slow
def test_the_loader_benchmark_measures_raw_and_prepared_storage_in_train_workers(tmp_path):
    out = tmp_path / "loader.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--videos", "4", "--seconds",
         "1.5", "--epochs", "2", "--workers", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {row["storage"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"raw (x264 defaults)", "prepared (default)"}
    for row in rows.values():
        assert row["clips_per_s"] > 0 and row["decode_ms"] > 0 and row["train_ms"] >= 0
    # keyframe-dense storage is bigger than x264's defaults: the price of cheap seeks
    assert rows["prepared (default)"]["bytes"] > rows["raw (x264 defaults)"]["bytes"]


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
