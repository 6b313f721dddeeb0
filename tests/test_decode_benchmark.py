"""The decode benchmark runs end to end and its figures hang together (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_decode_benchmark_measures_every_storage_form(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decode.py"), "--videos", "1", "--clips", "1",
         "--rounds", "1", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(r["form"], r["read"]): r for r in json.loads(out.read_text())["rows"]}
    assert {read for form, read in rows if form == "raw x264 defaults"} == {"through", "scan",
                                                                           "given"}
    assert ("h264 gop 2", "scan") in rows
    assert all(r["cpu_ms"] > 0 and r["cores_per_gpu"] > 0 for r in rows.values())
    size = {form: r["mb_per_video"] for (form, _), r in rows.items()}
    # more keyframes cost bytes; JPEG frames more still
    assert size["raw x264 defaults"] < size["h264 gop 16"] < size["h264 gop 4"] < size[
        "h264 all-intra"] < size["jpeg q90 zip"]
    default = rows[("h264 gop 2", "given")]
    assert default["psnr_db_vs_raw"] >= 33  # the conversion keeps the raw file's frames closely
    assert "| storage |" in proc.stdout
