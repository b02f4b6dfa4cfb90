"""Top-k accuracy and loss accumulation that count each real sample once (padding excluded)."""
import oneflow as flow


def topk_correct(logits, target, valid, ks=(1, 5)):
    """``{k: number of valid samples whose target is in the top-k}`` (k capped at the class count)."""
    num_classes = logits.shape[-1]
    maxk = min(max(ks), num_classes)
    top = logits.topk(maxk, dim=-1)[1]  # (B, maxk)
    hit = (top == target.unsqueeze(-1)).to(flow.float32) * valid.unsqueeze(-1)
    return {k: hit[:, : min(k, num_classes)].sum() for k in ks}


class EvalMeter:
    """Accumulates loss sum, top-1 and top-5 hits and the valid-sample count over batches."""

    def __init__(self):
        self.loss = self.top1 = self.top5 = self.count = 0.0

    def update(self, logits, target, valid, loss_fn):
        valid = valid.to(flow.float32)
        per_sample = loss_fn(logits, target)
        hits = topk_correct(logits, target, valid)
        self.loss += float((per_sample * valid).sum().numpy())
        self.top1 += float(hits[1].numpy())
        self.top5 += float(hits[5].numpy())
        self.count += float(valid.sum().numpy())

    def result(self):
        n = max(self.count, 1.0)
        return {"loss": self.loss / n, "top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n,
                "count": int(self.count)}
