"""Where a training step's CPU time goes: ``torch.profiler`` self times, split by kind of work.

Both implementations do the same multiply-accumulates, so what one can win over the other is in
everything around them. The split answers how much that is: matrix products (``mm``, ``addmm``,
``bmm``, the patch convolution), the attention kernels (SDPA, softmax), the optimiser step
(AdamW's element-wise updates, under ``Optimizer.step``) and the rest of forward and backward
(LayerNorm, GELU, residual adds, copies, ...). Self times are summed, so nothing counts twice.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv",
                        "aten::mkldnn_convolution", "aten::convolution_backward",
                        "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward"})
SOFTMAX_OPS = frozenset({"aten::_softmax", "aten::_softmax_backward_data"})  # not the loss's
KINDS = ("matmul", "attention", "optimizer", "rest")


def _kind(event) -> str:
    if event.name in MATMUL_OPS:
        return "matmul"
    if "scaled_dot_product" in event.name or event.name in SOFTMAX_OPS:
        return "attention"
    node = event
    while node is not None:
        if node.name.startswith("Optimizer.step"):
            return "optimizer"
        node = node.cpu_parent
    return "rest"


def profile_split(step: Callable[[], float], top: int = 6) -> dict:
    """Self CPU seconds of one ``step()`` per kind (:data:`KINDS`); the ``top`` ops of "rest"."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds: Counter = Counter()
    rest_ops: Counter = Counter()
    for event in prof.events():
        kind = _kind(event)
        seconds[kind] += event.self_cpu_time_total / 1e6
        if kind == "rest":
            rest_ops[event.name] += event.self_cpu_time_total / 1e6
    return dict(total_s=sum(seconds.values()), **{f"{k}_s": seconds[k] for k in KINDS},
                top_rest=rest_ops.most_common(top))


def split_lines(precision: str, splits: dict[str, dict]) -> list[str]:
    """A table of the splits of several models, then each one's largest "rest" ops."""
    header = (f"{'precision':<10s} {'model':<14s} {'total (s)':>9s} "
              + " ".join(f"{k + ' (s)':>13s}" for k in KINDS))
    lines = [header, "-" * len(header)]
    for name, s in splits.items():
        cells = " ".join(f"{s[k + '_s']:6.2f} ({100 * s[k + '_s'] / s['total_s']:3.0f}%)"
                         for k in KINDS)
        lines.append(f"{precision:<10s} {name:<14s} {s['total_s']:9.2f} {cells}")
    for name, s in splits.items():
        ops = ", ".join(f"{op.removeprefix('aten::')} {sec:.2f}" for op, sec in s["top_rest"])
        lines.append(f"{precision} {name} largest 'rest' ops (s): {ops}")
    return lines
