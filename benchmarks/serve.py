"""Serving benchmark: one model against three sharing a backbone, 1 / 4 / 16 concurrent clients.

Run: ``.venv/bin/python benchmarks/serve.py [--requests 96] [--clients 1,4,16] [--json out.json]``

Registers the tiny demo models (the demo's config over a briefly pre-trained tiny backbone file,
adapters and heads perturbed differently) in a temporary sqlite registry, starts the real Serve
application of ``aim-video serve`` on a private local cluster, and sends the demo's synthetic MP4s
over HTTP from client threads in this process: to one served model, to the same with batching off
(at the most clients), then round robin to three models that share one backbone copy. Per row:
requests per second, p50 / p99 latency, and the CPU time the replica and the proxy spent per
request (read from /proc, beside the wall time). It also prints the weight memory the replica
reports, the CPU cost of the replica's own path (decode, forward) without HTTP or Serve, and the
meta-device count for CLIP ViT-B/16. The clients share the machine's CPUs with
the server: on two cores that caps every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil
import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aim_core.backbones import build_model  # noqa: E402
from aim_core.checkpoint import save_model  # noqa: E402
from aim_core.config import Config, ModelConfig  # noqa: E402
from pipelines.serving.footprint import estimate_table, sharing_estimate  # noqa: E402
from pipelines.serving.settings import ServeConfig, ServedRef  # noqa: E402

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
MODELS = ("tiny-a", "tiny-b", "tiny-c")
SERVER_PROCESSES = ("ray::ServeReplica", "ray::ProxyActor")


@dataclass
class Row:
    models: int
    max_batch_size: int
    clients: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_request: float


# ----------------------------------------------------------------------------------------------
# Models and videos
# ----------------------------------------------------------------------------------------------

def register_demo_models(folder: Path, pretrain_steps: int) -> tuple[Config, list[Path]]:
    """Three tiny demo models on one backbone file, registered @champion; and demo videos."""
    from aim_core.tiny import pretrain_tiny_backbone
    from pipelines.data.synthetic import generate_synthetic
    from pipelines.demo import DEMO_CONFIG
    from pipelines.tracking.registry import register_model

    weights = pretrain_tiny_backbone(folder / "tiny_vit.pt", steps=pretrain_steps)
    base = Config.load(DEMO_CONFIG)
    cfg = replace(base, model=replace(base.model, backbone=replace(
        base.model.backbone, pretrained=str(weights))),
        run=replace(base.run, tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"))
    for seed, name in enumerate(MODELS, start=1):
        model = build_model(cfg.model)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.tunable_parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        register_model(save_model(folder / name, model.eval(), cfg), name, "champion", cfg=cfg)
    videos = generate_synthetic(folder / "synthetic", videos_per_class=1, size=32, frames=16)
    return cfg, sorted((videos / "videos").rglob("*.mp4"))


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------

def server_cpu_seconds(session: str) -> float:
    """User + system CPU time so far of the session's Serve replicas and proxies."""
    from pipelines.runtime import session_processes

    total = 0.0
    for pid in session_processes(session):
        try:
            process = psutil.Process(pid)
            name, times = (process.cmdline() or [""])[0], process.cpu_times()
        except psutil.Error:
            continue
        if name.startswith(SERVER_PROCESSES):
            total += times.user + times.system
    return total


def load(url: str, names: list[str], videos: list[bytes], clients: int, total: int
         ) -> list[float]:
    """Send ``total`` predictions from ``clients`` threads; their latencies in seconds."""
    def client(k: int) -> list[float]:
        latencies = []
        with requests.Session() as http:
            for i in range(k, total, clients):
                start = time.perf_counter()
                answer = http.post(f"{url}/v1/models/{names[i % len(names)]}:predict",
                                   data=videos[i % len(videos)], timeout=300,
                                   headers={"Content-Type": "video/mp4"})
                answer.raise_for_status()
                latencies.append(time.perf_counter() - start)
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        return [t for part in pool.map(client, range(clients)) for t in part]


def measure(url: str, session: str, names: list[str], batch: int, videos: list[bytes],
            clients: int, total: int) -> Row:
    load(url, names, videos, clients, min(total, 2 * clients))      # warm the connections
    cpu, start = server_cpu_seconds(session), time.perf_counter()
    latencies = sorted(load(url, names, videos, clients, total))
    wall = time.perf_counter() - start
    cpu = server_cpu_seconds(session) - cpu
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return Row(len(names), batch, clients, total, total / wall, 1e3 * statistics.median(latencies),
               1e3 * p99, 1e3 * cpu / total)


def in_process_cpu_ms(cfg: Config, videos: list[bytes], batch: int, decode_only: bool = False,
                      repeats: int = 96) -> float:
    """CPU ms per video of the replica's own path without HTTP or Serve (decode, then forward
    ``batch`` videos at a time), in this process with one torch thread, as a Ray worker with
    one CPU runs it."""
    from aim_core.inference import Inference
    from pipelines.serving.inputs import Upload, decode_views
    from pipelines.serving.pool import ServedModel, score_videos

    served = ServedModel(ServedRef("m", version="1"), "1", build_model(cfg.model).eval(), cfg,
                         [], Inference.for_config(cfg, "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.process_time()
    for first in range(0, repeats, batch):
        items = [(served, decode_views(Upload(videos[i % len(videos)]), cfg,
                                       time.monotonic() + 60, len(videos[i % len(videos)])))
                 for i in range(first, first + batch)]
        if not decode_only:
            score_videos(items)
    cpu = time.process_time() - start
    torch.set_num_threads(threads)
    return 1e3 * cpu / (repeats // batch * batch)


def serve_scenario(names: list[str], settings: ServeConfig, tracking_uri: str) -> str:
    from pipelines.serving.launch import serve_app

    refs = [ServedRef(name, alias="champion") for name in names]
    return serve_app(refs, settings, tracking_uri)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def format_rows(rows: list[Row]) -> str:
    lines = ["| served models | max batch | clients | requests/s | p50 | p99 "
             "| server CPU / request |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.models} | {r.max_batch_size} | {r.clients} | {r.requests_per_s:.1f} "
                     f"| {r.p50_ms:.0f} ms "
                     f"| {r.p99_ms:.0f} ms | {r.server_cpu_ms_per_request:.1f} ms |")
    return "\n".join(lines)


def format_memory(memory: dict[int, dict]) -> str:
    kib = 1024
    lines = []
    for models, m in sorted(memory.items()):
        lines.append(f"{models} model(s) in the replica: {m['weight_bytes'] / kib:.0f} KiB of "
                     f"weights, against {m['separate_bytes'] / kib:.0f} KiB as separate models "
                     f"({m['weight_bytes'] / m['separate_bytes']:.2f}x)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=96, help="requests per row")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per row")
    parser.add_argument("--pretrain-steps", type=int, default=50,
                        help="tiny backbone pre-training steps (accuracy does not matter here)")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    from pipelines.runtime import keep_private_cluster_on_loopback

    keep_private_cluster_on_loopback()          # before Ray is imported, as the CLI does
    import ray
    from ray import serve

    print("weight memory, CLIP ViT-B/16 AIM (8 frames, 400 classes), meta device, fp32:")
    print(estimate_table(sharing_estimate(ModelConfig())))
    with tempfile.TemporaryDirectory(prefix="aim-serve-bench-") as tmp:
        cfg, paths = register_demo_models(Path(tmp), args.pretrain_steps)
        videos = [p.read_bytes() for p in paths]
        in_process = {"decode": in_process_cpu_ms(cfg, videos, 1, decode_only=True),
                      "decode + forward, batch 1": in_process_cpu_ms(cfg, videos, 1),
                      "decode + forward, batch 8": in_process_cpu_ms(cfg, videos, 8)}
        context = ray.init(address="local", num_cpus=2, include_dashboard=False,
                           log_to_driver=False)
        session = context.address_info["session_dir"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        settings = ServeConfig(port=port, replica_cpus=1.0)
        # one model; the same without batching, at the most clients; three sharing a backbone
        scenarios = [([MODELS[0]], settings, clients),
                     ([MODELS[0]], replace(settings, max_batch_size=1), clients[-1:]),
                     (list(MODELS), settings, clients)]
        rows, memory = [], {}
        try:
            for names, scenario, counts in scenarios:
                url = serve_scenario(names, scenario, cfg.run.tracking_uri)
                memory[len(names)] = requests.get(f"{url}/v1/models", timeout=60).json()["memory"]
                rows += [measure(url, session, names, scenario.max_batch_size, videos, c,
                                 args.requests) for c in counts]
        finally:
            serve.shutdown()
            ray.shutdown()
    print(f"\ntiny demo models ({len(videos)} demo videos of 16 frames at 32x32, 1 view each), "
          f"one replica with 1 CPU, batch wait {settings.batch_wait_s * 1e3:.0f} ms, "
          f"{os.cpu_count()} CPUs here:")
    print(format_rows(rows))
    print(format_memory(memory))
    print("the replica's path in this process, no HTTP or Serve, CPU per video: "
          + ", ".join(f"{what} {ms:.1f} ms" for what, ms in in_process.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                               "memory": memory, "in_process_cpu_ms": in_process},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
