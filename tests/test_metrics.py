"""Top-k counting with padded samples excluded."""
import oneflow as flow

from oneflow_posmlp.engine.metrics import EvalMeter, topk_correct


def test_topk_counts_only_valid_samples():
    logits = flow.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    target = flow.tensor([0, 0, 1])
    valid = flow.tensor([1.0, 1.0, 0.0])  # the third row is padding
    hits = topk_correct(logits, target, valid)
    assert hits[1].item() == 1 and hits[5].item() == 1  # row 2's target (0) is its 6th best


def test_meter_averages_over_valid_samples():
    m = EvalMeter()
    logits = flow.tensor([[2.0, 0.0], [0.0, 2.0]])
    m.update(logits, flow.tensor([0, 0]), flow.tensor([1, 0]), flow.nn.CrossEntropyLoss(reduction="none"))
    r = m.result()
    assert r["count"] == 1 and r["top1"] == 100.0 and r["top5"] == 100.0
    assert abs(r["loss"] - float(flow.nn.functional.cross_entropy(logits[:1], flow.tensor([0])).item())) < 1e-6
