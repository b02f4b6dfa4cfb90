"""The end-of-epoch validation: the model, and its EMA, on the validation set every ``train.eval_interval``
epochs and after the last (:func:`~oneflow_posmlp.engine.evaluate.evaluate`, reduced over the ranks)."""


class Validation:
    """``train_cfg``: the ``train:`` section; ``val_loader``: this rank's validation batches; ``ema``: the model
    EMA or None."""

    def __init__(self, train_cfg, val_loader, ema=None):
        self.train_cfg, self.val_loader, self.ema = train_cfg, val_loader, ema

    def due(self, epoch):
        """Whether epoch ``epoch`` (0-based) ends with an evaluation."""
        t = self.train_cfg
        return (epoch + 1) % t["eval_interval"] == 0 or epoch + 1 == t["epochs"]

    def forward_batches(self, epoch):
        """Validation batches the end of epoch ``epoch`` runs (model and EMA), for the time budget."""
        return (2 if self.ema is not None else 1) * len(self.val_loader) if self.due(epoch) else 0

    def run(self, evaluate, model):
        """``(row, images)``: ``row`` the CSV columns ``eval_loss/top1/top5`` of ``model`` and ``ema_eval_*`` of the
        EMA, by ``evaluate(model) -> {loss, top1, top5, count}``."""
        res = evaluate(model)
        row = {"eval_loss": res["loss"], "eval_top1": res["top1"], "eval_top5": res["top5"]}
        if self.ema is not None:
            ema = evaluate(self.ema.module)
            row.update(ema_eval_loss=ema["loss"], ema_eval_top1=ema["top1"], ema_eval_top5=ema["top5"])
        return row, res["count"]
