"""Processes that only schedule work import only what scheduling needs.

Every Ray Data split coordinator imports the module that defines its plan's task functions, to
unpickle them; two coordinators per training run (train and val) that imported torch and
torchvision would pay several seconds of CPU each for nothing. The epoch clock's actor likewise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "open_clip", "mlflow")


def modules_after_importing(module: str) -> set[str]:
    """The heavy packages a fresh interpreter holds after ``import module``."""
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=True)
    return set(json.loads(proc.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["pipelines.data.clips", "pipelines.data.epochs"])
def test_what_a_split_coordinator_unpickles_imports_no_deep_learning_stack(module):
    assert modules_after_importing(module) == set()
