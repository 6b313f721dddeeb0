"""Classification metrics agree with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aim_core.metrics import (ClassificationMeter, average_views, confusion_matrix,
                              mean_class_accuracy, per_class_accuracy, top_k_accuracy,
                              topk_correct)

# 5 samples, 4 classes. The rank of the true label is 1, 1, 2, 3, 3.
PROBS = torch.tensor([
    [0.70, 0.10, 0.15, 0.05],   # label 0: predicted 0
    [0.20, 0.50, 0.20, 0.10],   # label 1: predicted 1
    [0.60, 0.10, 0.30, 0.00],   # label 2: predicted 0, label second
    [0.05, 0.60, 0.25, 0.10],   # label 3: predicted 1, label third
    [0.10, 0.20, 0.30, 0.40],   # label 1: predicted 3, label third
])
LABELS = torch.tensor([0, 1, 2, 3, 1])
CONFUSION = [[1, 0, 0, 0],
             [0, 1, 0, 1],
             [1, 0, 0, 0],
             [0, 1, 0, 0]]


def test_top_k_accuracy_counts_the_label_among_the_k_best_scores():
    assert top_k_accuracy(PROBS, LABELS, 1) == pytest.approx(2 / 5)
    assert top_k_accuracy(PROBS, LABELS, 2) == pytest.approx(3 / 5)
    assert top_k_accuracy(PROBS, LABELS, 3) == pytest.approx(5 / 5)
    assert topk_correct(PROBS, LABELS, (1, 2, 3)) == [2, 3, 5]


def test_k_larger_than_the_number_of_classes_is_capped():
    assert top_k_accuracy(PROBS, LABELS, 5) == 1.0


def test_confusion_matrix_has_true_classes_as_rows():
    cm = confusion_matrix(PROBS.argmax(1), LABELS, 4)
    assert cm.tolist() == CONFUSION
    assert cm.dtype == torch.int64


def test_per_class_and_mean_class_accuracy():
    assert per_class_accuracy(CONFUSION) == [1.0, 0.5, 0.0, 0.0]
    assert mean_class_accuracy(CONFUSION) == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_classes_without_samples_are_none_and_left_out_of_the_mean():
    cm = confusion_matrix([0, 0, 2], [0, 2, 2], num_classes=3)
    assert per_class_accuracy(cm) == [1.0, None, 0.5]
    assert mean_class_accuracy(cm) == pytest.approx(0.75)


def test_meter_over_batches_equals_the_hand_computed_metrics():
    meter = ClassificationMeter(num_classes=4)
    meter.update(PROBS[:2], LABELS[:2])
    meter.update(PROBS[2:].numpy(), LABELS[2:].numpy())   # numpy works too
    result = meter.compute()
    assert result["top1"] == pytest.approx(0.4)
    assert result["top5"] == 1.0                           # k capped at 4 classes
    assert result["mean_class_acc"] == pytest.approx(0.375)
    assert result["per_class"] == [1.0, 0.5, 0.0, 0.0]
    assert result["confusion"] == CONFUSION
    assert result["num_samples"] == 5


def test_meter_gives_the_same_result_for_logits_and_probabilities():
    from_probs, from_logits = ClassificationMeter(4), ClassificationMeter(4)
    from_probs.update(PROBS, LABELS)
    from_logits.update(torch.log(PROBS + 1e-6) * 3.0 + 7.0, LABELS)
    assert from_probs.compute() == from_logits.compute()


def test_meter_with_many_classes_reports_real_top5():
    scores = torch.eye(10)[[0, 1, 2]] + torch.arange(10) * 0.01  # label best, then 9, 8, 7, 6
    meter = ClassificationMeter(10)
    meter.update(scores, torch.tensor([0, 6, 5]))  # ranks: 1, 5, 6
    result = meter.compute()
    assert result["top1"] == pytest.approx(1 / 3)
    assert result["top5"] == pytest.approx(2 / 3)


def test_meter_reset_merge_and_empty():
    a, b = ClassificationMeter(4), ClassificationMeter(4)
    a.update(PROBS[:3], LABELS[:3])
    b.update(PROBS[3:], LABELS[3:])
    assert a.merge(b).compute()["confusion"] == CONFUSION
    a.reset()
    assert a.count == 0
    with pytest.raises(ValueError, match="no samples"):
        a.compute()


def test_meter_rejects_wrong_shapes_and_labels():
    meter = ClassificationMeter(4)
    with pytest.raises(ValueError, match="classes"):
        meter.update(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        meter.update(torch.zeros(2, 4), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"\(N,\)"):
        meter.update(torch.zeros(2, 4), torch.tensor([0]))


def test_multi_view_aggregation_averages_softmax_probabilities():
    views = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # 1 video, 2 views, 2 classes
    # softmax: [0.5, 0.5] and [0.75, 0.25] -> mean [0.625, 0.375] (averaging logits would differ)
    torch.testing.assert_close(average_views(views), torch.tensor([[0.625, 0.375]]))
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    torch.testing.assert_close(average_views(probs, logits=False), torch.tensor([0.4, 0.6]))


def _distributed_worker(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    meter = ClassificationMeter(4)
    half = slice(0, 3) if rank == 0 else slice(3, 5)
    meter.update(PROBS[half], LABELS[half])
    meter.all_reduce()
    if rank == 0:
        torch.save(meter.compute(), out_file)
    dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~8 s)
def test_all_reduce_sums_the_state_of_every_rank(tmp_path):
    out = tmp_path / "result.pt"
    torch.multiprocessing.spawn(_distributed_worker, args=(str(tmp_path / "init"), str(out)),
                                nprocs=2)
    result = torch.load(out, weights_only=False)
    assert result["confusion"] == CONFUSION
    assert result["top1"] == pytest.approx(0.4)


def test_all_reduce_without_a_process_group_changes_nothing():
    meter = ClassificationMeter(4)
    meter.update(PROBS, LABELS)
    meter.all_reduce()
    assert meter.compute()["confusion"] == CONFUSION
