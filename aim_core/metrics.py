"""Classification metrics for video recognition: top-k, mean class accuracy, confusion matrix.

Plain torch, no Ray or MLflow, so the same code scores a training epoch, ``aim-video eval`` and a
notebook. Scores may be logits or probabilities: every metric here depends only on the ranking of
the classes, which softmax does not change. Multi-view testing averages *probabilities* over the
views of a video (as the AIM/mmaction2 test pipelines do), see :func:`average_views`.

Conventions: the confusion matrix has true classes as rows and predictions as columns; mean class
accuracy averages the recall of the classes that occur in the labels (mmaction2's
``mean_class_accuracy``), so a class absent from a small validation split does not count as 0.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]


def _tensor(x: ArrayLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.cpu()
    return t.to(dtype) if dtype is not None else t


def _check(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, num_classes), got shape {tuple(scores.shape)}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must be (N,) with N={scores.shape[0]}, got {tuple(labels.shape)}")
    k = scores.shape[1] if num_classes is None else num_classes
    if scores.shape[1] != k:
        raise ValueError(f"scores have {scores.shape[1]} classes, expected {k}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k - 1}], "
                         f"got {int(labels.min())}..{int(labels.max())}")


def topk_correct(scores: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 5)) -> list[int]:
    """How many samples have their label among the ``k`` best scores, per ``k`` (capped at C)."""
    s, y = _tensor(scores, torch.float32), _tensor(labels, torch.long)
    _check(s, y)
    kmax = min(max(ks), s.shape[1])
    top = s.topk(kmax, dim=1).indices                      # (N, kmax), best first
    hits = top.eq(y[:, None])
    return [int(hits[:, :min(k, kmax)].any(dim=1).sum()) for k in ks]


def top_k_accuracy(scores: ArrayLike, labels: ArrayLike, k: int = 1) -> float:
    """Share of samples whose label is among the ``k`` highest scores (``k`` capped at C)."""
    n = len(labels)
    if n == 0:
        raise ValueError("top_k_accuracy needs at least one sample")
    return topk_correct(scores, labels, (k,))[0] / n


def confusion_matrix(predictions: ArrayLike, labels: ArrayLike, num_classes: int) -> torch.Tensor:
    """int64 ``(C, C)``: entry ``[t, p]`` counts samples of true class ``t`` predicted as ``p``."""
    p, y = _tensor(predictions, torch.long), _tensor(labels, torch.long)
    if p.shape != y.shape or p.ndim != 1:
        raise ValueError(f"predictions {tuple(p.shape)} and labels {tuple(y.shape)} must be (N,)")
    both = torch.cat([p, y])
    if both.numel() and (int(both.min()) < 0 or int(both.max()) >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes - 1}]")
    flat = torch.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: ArrayLike) -> list[float | None]:
    """Recall of each class; ``None`` for a class with no samples (JSON-safe, unlike NaN)."""
    cm = _tensor(confusion, torch.long)
    support = cm.sum(dim=1)
    return [None if int(n) == 0 else float(cm[i, i]) / float(n) for i, n in enumerate(support)]


def mean_class_accuracy(confusion: ArrayLike) -> float:
    """Mean of the per-class recalls over the classes that have samples."""
    present = [a for a in per_class_accuracy(confusion) if a is not None]
    if not present:
        raise ValueError("mean_class_accuracy needs at least one sample")
    return float(np.mean(present))


def average_views(view_scores: ArrayLike, logits: bool = True) -> torch.Tensor:
    """``(..., V, C)`` scores of V views -> ``(..., C)`` probabilities averaged over the views.

    Averaging probabilities (not logits) is the multi-view protocol of the AIM test configs
    (mmaction2 ``average_clips='prob'``). Pass ``logits=False`` when the scores are already
    probabilities.
    """
    s = _tensor(view_scores, torch.float32)
    if s.ndim < 2:
        raise ValueError(f"expected (..., views, classes), got shape {tuple(s.shape)}")
    probs = s.softmax(dim=-1) if logits else s
    return probs.mean(dim=-2)


class ClassificationMeter:
    """Accumulates predictions batch by batch; :meth:`compute` gives every metric at once.

    Stores only the confusion matrix and the top-5 hit count, so memory does not grow with the
    data set, and the state of several workers adds up (:meth:`all_reduce`, :meth:`merge`).
    """

    def __init__(self, num_classes: int, topk: int = 5) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.topk = min(topk, num_classes)
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        self.topk_hits = 0

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``scores`` ``(N, C)`` logits or probabilities, ``labels`` ``(N,)``."""
        s, y = _tensor(scores, torch.float32), _tensor(labels, torch.long)
        _check(s, y, self.num_classes)
        if not len(y):
            return
        self.confusion += confusion_matrix(s.argmax(dim=1), y, self.num_classes)
        self.topk_hits += topk_correct(s, y, (self.topk,))[0]

    def merge(self, other: "ClassificationMeter") -> "ClassificationMeter":
        if other.num_classes != self.num_classes or other.topk != self.topk:
            raise ValueError("cannot merge meters of different shapes")
        self.confusion += other.confusion
        self.topk_hits += other.topk_hits
        return self

    def all_reduce(self) -> None:
        """Sum the state over a ``torch.distributed`` process group (no-op when there is none).

        Call on every rank before :meth:`compute` in data-parallel evaluation. NCCL needs the
        buffer on the rank's GPU, gloo on the CPU.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = (torch.device("cuda", torch.cuda.current_device())
                  if dist.get_backend() == "nccl" else torch.device("cpu"))
        state = torch.cat([self.confusion.flatten(), torch.tensor([self.topk_hits])]).to(device)
        dist.all_reduce(state)
        state = state.cpu()
        self.confusion = state[:-1].reshape(self.num_classes, self.num_classes).clone()
        self.topk_hits = int(state[-1])

    def compute(self) -> dict[str, Any]:
        """``top1``, ``top5`` (k capped at C), ``mean_class_acc`` as fractions in [0, 1];
        ``per_class`` (None for absent classes), ``confusion`` (nested lists), ``num_samples``."""
        n = self.count
        if n == 0:
            raise ValueError("ClassificationMeter.compute: no samples were added")
        return {
            "top1": float(self.confusion.diagonal().sum()) / n,
            "top5": self.topk_hits / n,
            "mean_class_acc": mean_class_accuracy(self.confusion),
            "per_class": per_class_accuracy(self.confusion),
            "confusion": self.confusion.tolist(),
            "num_samples": n,
        }
