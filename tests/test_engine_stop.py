"""Ending a run early (``engine/stop.py`` and the trainer's loop control): stop signals and the time budget save
``last`` at an update boundary and exit 75, and the run resumes exactly; a non-finite loss or gradient norm halts
(exit 3, nothing written) or is skipped. Signals are real ones sent by the test once a rank has logged an update.

Tolerance of the resumed-equals-uninterrupted checks: 1e-6 (the CPU runs are bitwise deterministic; measured
difference 0.0). The distributed checks run the demo recipe with Mixup/CutMix, drop path and EMA on, dropout
in eager mode (a graph's dropout masks after a resume are another draw: tests/test_train_resume.py).
"""
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import oneflow as flow
import pytest

from conftest import tiny_train_opts
from launch import ROOT, TIMEOUT, free_port, launcher, train_cmd
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.config import ConfigError, load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.stop import (EXIT_NONFINITE, EXIT_STOPPED, NonFiniteHalt, StopSignals, TimeBudget,
                                        _describe, any_rank, resolve_signals)

TOL = 1e-6
STOPPED = re.compile(r"stopped \((.+?)\) at epoch (\d+) update (\d+) \(batch (\d+)\)")


# ----------------------------------------------------------------- units
def test_stop_signal_names():
    assert resolve_signals(["SIGTERM", "USR1", "sigusr1"]) == sorted({signal.SIGTERM, signal.SIGUSR1})
    assert resolve_signals([]) == []
    for bad in ("SIGKILL", "SIGFOO", "9"):
        with pytest.raises(ConfigError, match=f"train.stop_signals: '{bad}' is not a signal"):
            resolve_signals([bad])


def test_handler_notes_the_first_signal_and_a_second_one_ends_the_process():
    previous = signal.getsignal(signal.SIGUSR1)
    with StopSignals([signal.SIGUSR1]) as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs the handler at the next bytecode
        assert signals.received == signal.SIGUSR1
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL  # the next one is not caught
    assert signal.getsignal(signal.SIGUSR1) is previous
    code = ("import os, signal, time, sys; from oneflow_posmlp.engine.stop import StopSignals\n"
            "s = StopSignals([signal.SIGTERM]).install()\n"
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05); print('noted', s.received, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('still alive')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == -signal.SIGTERM and f"noted {int(signal.SIGTERM)}" in res.stdout
    assert "still alive" not in res.stdout and "received SIGTERM: stopping at the next update boundary" in res.stderr


def test_a_forked_child_ignores_the_signal():
    """DataLoader workers are forked with the handler: the training process decides, the worker carries on."""
    with StopSignals([signal.SIGUSR1]) as signals:
        pid = os.fork()
        if pid == 0:  # the child signals itself, survives, and exits 0
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)
            os._exit(0 if signals.received is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert signals.received is None


def test_time_budget_leaves_room_for_the_next_work_and_a_save():
    b = TimeBudget(1.0, start=1000.0, state_bytes=0)  # deadline 1060
    assert b.save_seconds() == 10.0  # nothing measured yet: at least 10 s
    assert not b.exhausted(0.0, now=1000.0)
    assert b.exhausted(0.0, now=1060.0 - 10.0 * b.MARGIN)
    b.record("save", 4.0)  # measured saves count 1.5 times
    b.record("update", 2.0)
    b.record("update", 3.0)
    assert b.save_seconds() == 6.0 and b.update_seconds() == 3.0
    assert not b.exhausted(3.0, now=1060.0 - 9.0 * b.MARGIN - 0.01)
    assert b.exhausted(3.0, now=1060.0 - 9.0 * b.MARGIN)
    assert b.eval_estimate(4) == 10.0  # before an evaluation is measured: 4 batches at the mean update time
    b.record("eval", 7.0)
    assert b.eval_estimate(4) == 7.0
    assert TimeBudget(1.0, 0.0, state_bytes=2e9).save_seconds() == 40.0  # 2 GB at 50 MB/s
    assert not TimeBudget(0.0, 0.0).exhausted(1e9)  # 0: no budget


def test_stop_reason_names_the_signals_and_ranks():
    assert _describe({0: "SIGUSR1"}, 1) == "SIGUSR1"
    assert _describe({1: "SIGTERM"}, 2) == "SIGTERM on rank 1"
    assert _describe({0: "SIGTERM", 1: "SIGTERM"}, 2) == "SIGTERM on all 2 ranks"
    many = {r: "SIGTERM" for r in range(6)}
    assert _describe({**many, 7: "SIGUSR1"}, 8) == "SIGTERM on ranks 0, 1, 2, 3 (+2 more) and SIGUSR1 on rank 7"


def test_any_rank_on_one_process_is_the_flags():
    class One:
        distributed = False

    assert any_rank([0, 1, 2.5], One()) == [0.0, 1.0, 2.5]


# ----------------------------------------------------------------- one process, the real tool
def _train(root, out, *opts, resume=False, **extra):
    cmd = [sys.executable, *train_cmd(root, out, *(["--resume", "auto"] if resume else []), **extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, GLOG_minloglevel="2"))


def _wait_for(path, text, procs, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(path) and text in open(path).read():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {text!r} appeared in {path}")
        time.sleep(0.02)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def _stop_line(out, rank=0):
    lines = [line for line in open(os.path.join(out, f"log_rank{rank}.txt")) if STOPPED.search(line)]
    assert len(lines) == 1, lines
    reason, epoch, update, batch = STOPPED.search(lines[0]).groups()
    return reason, int(epoch), int(update), int(batch)


def test_sigusr1_stops_one_process_with_a_resumable_last(tiny_demo_root, tmp_path):
    out = tmp_path / "run"
    opts = {"train.epochs": 2, "data.limit_train_batches": 0, "train.ema": "true"}
    proc = _train(tiny_demo_root, out, **opts)
    _wait_for(out / "log_rank0.txt", "epoch 0 update 2:", [proc])
    proc.send_signal(signal.SIGUSR1)
    code, stdout, stderr = _finish(proc)
    assert code == EXIT_STOPPED, stderr[-2000:]
    reason, epoch, update, batch = _stop_line(out)
    assert reason == "SIGUSR1" and update >= 2 and "exit 75: continue with --resume auto" in stdout
    state = read_oneflow_checkpoint(out / "last")
    assert (state["epoch"], state["updates"], state["batch_in_epoch"]) == (epoch, update, batch)
    assert state["optimizer"]["state"]["step"] == update
    code, _, stderr = _finish(_train(tiny_demo_root, out, resume=True, **opts))
    assert code == 0, stderr[-2000:]
    assert read_oneflow_checkpoint(out / "last")["updates"] == 8


def test_a_tiny_time_budget_ends_with_75_and_a_resumable_last(tiny_demo_root, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = _finish(_train(tiny_demo_root, out, **{"train.max_minutes": 0.001}))
    assert code == EXIT_STOPPED, stderr[-2000:]
    reason, epoch, update, batch = _stop_line(out)
    assert reason == "train.max_minutes" and "of train.max_minutes left" in stdout
    assert read_oneflow_checkpoint(out / "last")["updates"] == update >= 1
    code, _, stderr = _finish(_train(tiny_demo_root, out, resume=True))
    assert code == 0, stderr[-2000:]


def _digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            h.update(os.path.relpath(os.path.join(root, name), path).encode())
            h.update(open(os.path.join(root, name), "rb").read())
    return h.hexdigest()


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_divergence_halts_and_leaves_the_checkpoints_byte_for_byte(tiny_demo_root, tmp_path, mode):
    """The issue's try: lr 1e6 without warm-up and clipping. Epoch 0 trains normally; its `last` and `best` are
    the good checkpoints; the run resumed at lr 1e6 diverges in epoch 1 and must not overwrite them."""
    out, graph = tmp_path / "run", {"train.graph": str(mode == "graph").lower()}
    code, _, stderr = _finish(_train(tiny_demo_root, out, **{"data.limit_train_batches": 0, **graph}))
    assert code == 0, stderr[-2000:]
    before = {name: _digest(out / name) for name in ("last", "best")}
    code, stdout, stderr = _finish(_train(tiny_demo_root, out, resume=True, **{
        "train.epochs": 3, "data.limit_train_batches": 0, "train.lr": "1.0e+6", "train.warmup_epochs": 0,
        "train.clip_grad": 0, **graph}))
    last = stderr.strip().splitlines()[-1]
    assert code == EXIT_NONFINITE, stderr[-2000:]
    assert re.fullmatch(r"error: non-finite loss or gradient norm at epoch 1 update \d+ \(loss \S+, grad_norm \S+\): "
                        r"stopped without writing a checkpoint; the last good checkpoint is \S+last \(epoch 1, "
                        r"update 4\); .*", last), last
    assert {name: _digest(out / name) for name in ("last", "best")} == before
    assert not [d for d in os.listdir(out) if d.startswith(".")]  # no half-written checkpoint either


def _poisoned(loader, bad):
    """``loader``'s batches with NaN in the images of the micro-batches numbered in ``bad`` (0-based, per epoch)."""
    class Poisoned:
        batch_size = loader.batch_size

        def __iter__(self):
            for i, (x, y) in enumerate(loader):
                yield (x * float("nan"), y) if i in bad else (x, y)

        def __len__(self):
            return len(loader)

    return Poisoned()


def _skip_trainer(root, out, mode, **extra):
    opts = {"train.epochs": 1, "train.ema": "true", "train.nonfinite": "skip", "train.graph": str(mode == "graph").lower(),
            **extra}
    return Trainer(load_config("configs/demo.yaml", tiny_train_opts(root, **opts)), output_dir=str(out))


def _weights(module):
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_skip_steps_over_one_poisoned_micro_batch_and_trains_on(tiny_demo_root, tmp_path, mode):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _skip_trainer(tiny_demo_root, tmp_path, mode)
    trainer.train_loader = _poisoned(trainer.train_loader, {1})  # the second of the epoch's 4 updates
    seen = []
    after_update = trainer._after_update

    def spy():  # the update count after each applied update
        after_update()
        seen.append(trainer.updates)

    trainer._after_update = spy
    trainer.fit()
    assert trainer.updates == 3 and trainer.nonfinite_skips == 1 and trainer.nonfinite_streak == 0
    log = (tmp_path / "log_rank0.txt").read_text()
    assert re.search(r"epoch 0 update 2: non-finite loss or gradient norm \(loss nan, grad_norm nan\): skipped: no "
                     r"optimizer step, no EMA update \(1 in a row of train.nonfinite_patience 5; 1 skipped in all\)", log)
    assert seen == [1, 2, 3] and "epoch 0 update 2: loss" in log  # the next batch is update 2
    state = read_oneflow_checkpoint(tmp_path / "last")
    assert state["optimizer"]["state"]["step"] == 3 and state["nonfinite_skips"] == 1
    for part in ("model", "ema"):
        assert all(np.isfinite(v.numpy()).all() for v in state[part].values() if v.dtype.is_floating_point)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/nonfinite_skips")] == [1.0]
    assert len(acc.Scalars("train/grad_norm")) == 3  # a graph reports its gradient norm too


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_skipped_update_changes_nothing(tiny_demo_root, tmp_path, mode):
    """Weights, BatchNorm statistics, EMA, AdamW moments and step count after the poisoned update (and after the
    run) are exactly those after the update before it."""
    trainer = _skip_trainer(tiny_demo_root, tmp_path, mode, **{"data.limit_train_batches": 2})
    trainer.train_loader = _poisoned(trainer.train_loader, {1})
    snap = []

    def state():
        return (_weights(trainer.model), _weights(trainer.ema.module),
                {i: ({k: v.numpy().copy() for k, v in st.items()} if isinstance(st, dict) else st)
                 for i, st in trainer.step.state_dict()["optimizer"]["state"].items()})

    after_update, decide = trainer._after_update, trainer._decide
    trainer._after_update = lambda: (after_update(), snap.append(("after update", state())))
    trainer._decide = lambda result, epoch_end: (snap.append(("boundary", state())), decide(result, epoch_end))[1]
    before = state()
    trainer.fit()
    snap.append(("end", state()))
    assert [what for what, _ in snap] == ["boundary", "after update", "boundary", "end"]
    first, poisoned, end = snap[1][1], snap[2][1], snap[3][1]
    assert not all(np.array_equal(before[0][k], first[0][k]) for k in first[0])  # (the first update did change them)
    for other in (poisoned, end):
        for part in (0, 1):  # model (with its buffers), EMA
            assert all(np.array_equal(first[part][k], other[part][k]) for k in first[part]), part
        assert other[2]["step"] == first[2]["step"] == 1
        for i, st in first[2].items():
            if isinstance(st, dict):
                assert all(np.array_equal(st[k], other[2][i][k]) for k in st), i


def test_skip_halts_after_its_patience(tiny_demo_root, tmp_path):
    trainer = _skip_trainer(tiny_demo_root, tmp_path, "eager", **{"train.nonfinite_patience": 2})
    trainer.train_loader = _poisoned(trainer.train_loader, {1, 2})
    with pytest.raises(NonFiniteHalt, match=r"2 non-finite updates in a row \(train.nonfinite_patience\), the last at "
                                            r"epoch 0 update 2 .*no checkpoint was written by this run"):
        trainer.fit()
    assert not (tmp_path / "last").exists()


def test_a_checkpoint_with_non_finite_weights_is_not_written(tiny_demo_root, tmp_path):
    trainer = _skip_trainer(tiny_demo_root, tmp_path, "eager")
    trainer.save("last")
    before = _digest(tmp_path / "last")
    with flow.no_grad():
        trainer.ema.module.head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteHalt, match=r"non-finite values in ema at epoch 0 update 0: \S+last was not written; "
                                            r"the last good checkpoint is \S+last \(epoch 0, update 0\)"):
        trainer.save("last")
    assert _digest(tmp_path / "last") == before
