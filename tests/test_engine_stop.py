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
import subprocess
import sys
import time

import numpy as np
import oneflow as flow
import pytest

from conftest import tiny_train_opts
from launch import (ROOT, TIMEOUT, children, end_pids, free_port, launcher, run_bounded, train_cmd,
                    wait_for_text)
from test_parallel_layouts import TWO_LEVELS
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.config import ConfigError, load_config
from oneflow_posmlp.engine import Trainer
from oneflow_posmlp.engine.stop import (EXIT_NONFINITE, EXIT_STOPPED, NonFiniteHalt, StopSignals, TimeBudget,
                                        TrainingStopped, _describe, any_rank, resolve_signals)

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
    res = run_bounded([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
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

@pytest.mark.slow

def test_sigusr1_stops_one_process_with_a_resumable_last(tiny_demo_root, tmp_path):
    out = tmp_path / "run"
    opts = {"train.epochs": 2, "data.limit_train_batches": 0, "train.ema": "true"}
    proc = _train(tiny_demo_root, out, **opts)
    wait_for_text(out / "log_rank0.txt", "epoch 0 update 2:", [proc])
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

@pytest.mark.slow

def test_a_tiny_time_budget_ends_with_75_and_a_resumable_last(tiny_demo_root, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = _finish(_train(tiny_demo_root, out, **{"train.max_minutes": 0.001}))
    assert code == EXIT_STOPPED, stderr[-2000:]
    reason, epoch, update, batch = _stop_line(out)
    margin = re.search(r"; (\d+\.\d) s (of train.max_minutes left|past train.max_minutes); exit 75", stdout)
    assert reason == "train.max_minutes" and margin, stdout[-2000:]  # seconds: 0.06 s reads 0.0 min
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


def _diverge(root, out, mode, **extra):
    """The issue's try: epoch 0 trains normally (eagerly: checkpoints resume in either mode) and writes the good
    `last` and `best`; resumed at lr 1e6 without warm-up and clipping (``mode``: eager or graph; ``extra``
    options), the run must end with exit 3. Returns ``(digests of last and best before, stdout, stderr's last
    line)``."""
    code, _, stderr = _finish(_train(root, out, **{"data.limit_train_batches": 0}))
    assert code == 0, stderr[-2000:]
    before = {name: _digest(out / name) for name in ("last", "best")}
    code, stdout, stderr = _finish(_train(root, out, resume=True, **{
        "train.epochs": 3, "data.limit_train_batches": 0, "train.lr": "1.0e+6", "train.warmup_epochs": 0,
        "train.clip_grad": 0, "train.graph": str(mode == "graph").lower(), **extra}))
    assert code == EXIT_NONFINITE, stderr[-2000:]
    return before, stdout, stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_divergence_halts_and_leaves_the_checkpoints_byte_for_byte(tiny_demo_root, tmp_path, mode):
    """The issue's try: lr 1e6 without warm-up and clipping. Epoch 0 trains normally (eagerly: checkpoints resume
    in either mode); its `last` and `best` are the good checkpoints; the run resumed at lr 1e6 diverges in epoch 1
    and must not overwrite them."""
    out = tmp_path / "run"
    before, _, last = _diverge(tiny_demo_root, out, mode)
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
    opts = {"train.epochs": 1, "train.ema": "true", "train.nonfinite": "skip",
            "train.graph": str(mode == "graph").lower(), **extra}
    return Trainer(load_config("configs/demo.yaml", tiny_train_opts(root, **opts)), output_dir=str(out))


def _weights(module):
    return {k: v.numpy().copy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["eager", pytest.param("graph", marks=[pytest.mark.isolated, pytest.mark.slow])])
def test_skip_steps_over_one_poisoned_micro_batch_and_trains_on(tiny_demo_root, tmp_path, mode):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _skip_trainer(tiny_demo_root, tmp_path, mode)
    trainer.train_loader = _poisoned(trainer.train_loader, {1})  # the second of the epoch's 4 updates
    seen = []
    after_update = trainer.updater.after_update

    def spy(updates):  # the update count after each applied update
        updates = after_update(updates)
        seen.append(updates)
        return updates

    trainer.updater.after_update = spy
    trainer.fit()
    assert trainer.updates == 3 and trainer.nonfinite_skips == 1 and trainer.nonfinite_streak == 0
    log = (tmp_path / "log_rank0.txt").read_text()
    assert re.search(r"epoch 0 update 2: non-finite loss or gradient norm \(loss nan, grad_norm nan\): skipped: no "
                     r"optimizer step, no EMA update \(1 in a row of train.nonfinite_patience 5; 1 skipped in all\)",
                     log)
    assert seen == [1, 2, 3] and "epoch 0 update 2: loss" in log  # the next batch is update 2
    state = read_oneflow_checkpoint(tmp_path / "last")
    assert state["optimizer"]["state"]["step"] == 3 and state["nonfinite_skips"] == 1
    for part in ("model", "ema"):
        assert all(np.isfinite(v.numpy()).all() for v in state[part].values() if v.dtype.is_floating_point)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/nonfinite_skips")] == [1.0]
    assert len(acc.Scalars("train/grad_norm")) == 3  # a graph reports its gradient norm too


@pytest.mark.parametrize("mode", ["eager", pytest.param("graph", marks=[pytest.mark.isolated, pytest.mark.slow])])
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

    after_update, decide = trainer.updater.after_update, trainer.boundary.decide
    trainer.updater.after_update = lambda updates: (after_update(updates), snap.append(("after update", state())))[0]
    trainer.boundary.decide = lambda *args: (snap.append(("boundary", state())), decide(*args))[1]
    before = state()
    trainer.train_one_epoch()  # (the loop; no evaluation)
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


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_skip_with_a_model_that_outputs_nan_halts_at_the_epoch_end_and_keeps_the_good_checkpoints(
        tiny_demo_root, tmp_path, mode):
    """The issue's try with train.nonfinite=skip: the first update at lr 1e6 is finite (weights up to ~1e6), the
    next ones are skipped, and the model outputs NaN: the epoch's validation loss is NaN, so `last` and `best` are
    not written from it; the line names the good checkpoint and only fixes that differ from the settings."""
    out = tmp_path / "run"
    before, stdout, last = _diverge(tiny_demo_root, out, mode, **{"train.nonfinite": "skip", "train.ema": "true"})
    assert re.fullmatch(r"error: validation loss nan(?: and EMA validation loss nan)? after epoch 1 update 5: last and best "
                        r"not written; the last good checkpoint is \S+last \(epoch 1, update 4\); lower train.lr \(now "
                        r"1e\+06\), set train.clip_grad > 0 \(e.g. 5.0\) or set train.warmup_epochs > 0", last), last
    assert "epoch 1 update 5: loss" in stdout and "skipped" in stdout  # update 5 applied, the next ones skipped
    assert {name: _digest(out / name) for name in ("last", "best")} == before


def test_the_logged_lr_is_the_one_the_update_ran_at(tiny_demo_root, tmp_path):
    """The first update runs at train.warmup_lr (the schedule's value at update 0); the line after it says so."""
    code, stdout, stderr = _finish(_train(tiny_demo_root, tmp_path, **{"train.warmup_lr": "3.0e-4"}))
    assert code == 0, stderr[-2000:]
    assert re.search(r"epoch 0 update 1: loss \S+ lr 3\.000e-04 ", stdout), stdout[-2000:]


SCORES = {0: 50.0, 1: 70.0, 2: 60.0, 3: 65.0}  # top-1 per epoch: best at epoch 1; epochs 2 and 3 are worse


def _scripted(trainer, stop_at=()):
    """``trainer`` with its real evaluation but the top-1 of :data:`SCORES` (model and EMA), and a stop signal
    noted during the evaluation of the epochs in ``stop_at``: the run stops at the end of those epochs, as when
    SLURM's signal arrives during an evaluation."""
    real = trainer.evaluate

    def evaluate(model=None):
        res = dict(real(model), top1=SCORES[trainer.epoch])
        if trainer.epoch in stop_at:
            trainer.stop.signals.received = signal.SIGUSR1
        return res

    trainer.evaluate = evaluate
    return trainer


def test_a_chain_of_stops_and_resumes_keeps_the_best_of_the_uninterrupted_run(tiny_demo_root, tmp_path):
    """Stopped at the end of every epoch and resumed (--resume auto): `best` is the uninterrupted run's, by epoch,
    score and the bytes of its weights, and `last` carries that best."""
    cfg = load_config("configs/demo.yaml", tiny_train_opts(tiny_demo_root, **{
        "train.epochs": 4, "data.limit_train_batches": 2, "train.ema": "true"}))
    full, chain = tmp_path / "full", tmp_path / "chain"
    assert _scripted(Trainer(cfg, output_dir=str(full))).fit() == 70.0
    for epoch in range(4):
        trainer = _scripted(Trainer(cfg, output_dir=str(chain), resume="auto"), stop_at={epoch})
        if epoch < 3:
            with pytest.raises(TrainingStopped):
                trainer.fit()
        else:
            trainer.fit()
        assert trainer.epoch == epoch + 1
    for name in ("best", "last"):
        a, b = read_oneflow_checkpoint(full / name), read_oneflow_checkpoint(chain / name)
        assert (a["best_epoch"], a["best_top1"]) == (b["best_epoch"], b["best_top1"]) == (1, 70.0), name
        assert a["epoch"] == b["epoch"]
    a, b = read_oneflow_checkpoint(full / "best"), read_oneflow_checkpoint(chain / "best")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(a[part][k].numpy().tobytes() == b[part][k].numpy().tobytes() for k in a[part]), part


# ----------------------------------------------------------------- 2 ranks: real signals, exit codes, exact resume
# Two jobs of tests/runs_job.py (several tool runs one after another in the same processes: one OneFlow start-up
# per job). The ranks of the first are started without a launcher (RANK, WORLD_SIZE, ... set by the test, as
# srun or torchrun would), so the test signals rank 1 alone; the second runs under oneflow.distributed.launch as
# the leader of its own process group (setsid), whose SIGTERM handler passes the signal to every rank.
RECIPE = {"train.epochs": 1, "data.limit_train_batches": 0, "train.ema": "true", "aug.mixup": 0.8, "aug.cutmix": 1.0,
          "model.drop_path_rate": 0.1, "output.save_every_steps": 0}
MODES = {"eager": {"model.drop_rate": 0.1}, "graph": {"train.graph": "true"}}
MODE_OPTS = {"eager": (), "graph": TWO_LEVELS}  # a graph of the 2-level cut compiles in half the time
SIGNAL_AT = "epoch 0 update 1:"  # the first of the epoch's 4 updates


def _run(root, out, mode, resume=False):
    from launch import train_argv

    return {"tool": "train.py", "expect_error": not resume and "stop" in os.path.basename(str(out)),
            "argv": train_argv(root, out, *MODE_OPTS[mode], *(["--resume", "auto"] if resume else []), **RECIPE,
                               **MODES[mode])}


def _start_direct(world, runs, out):
    """``world`` processes of tests/runs_job.py with the variables a launcher sets, and no launcher."""
    os.makedirs(out, exist_ok=True)
    spec = os.path.join(out, "runs.json")
    with open(spec, "w") as f:
        json.dump(runs, f)
    port, procs = free_port(), []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), GLOG_minloglevel="2")
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "runs_job.py"), spec, str(out)],
                                      cwd=ROOT, env=env, stdout=open(os.path.join(out, f"stdout{r}"), "w"),
                                      stderr=subprocess.STDOUT))
    return procs


def _results(out, world, n):
    per_rank = []
    for r in range(world):
        path = os.path.join(out, f"rank{r}.json")
        per_rank.append(json.load(open(path)) if os.path.isfile(path) else [])
    return [[done[i] if i < len(done) else None for done in per_rank] for i in range(n)]


@pytest.fixture(scope="module")
def rank1_job(tiny_demo_root, tmp_path_factory):
    """Uninterrupted runs, and runs whose rank 1 alone gets SIGTERM, then resumed: eager, then graph."""
    base = tmp_path_factory.mktemp("rank1")
    runs = []
    for mode in MODES:
        runs += [_run(tiny_demo_root, base / f"full_{mode}", mode), _run(tiny_demo_root, base / f"stop_{mode}", mode),
                 _run(tiny_demo_root, base / f"stop_{mode}", mode, resume=True)]
    procs = _start_direct(2, runs, base / "job")
    deadline = time.time() + TIMEOUT + 180 * len(runs)  # against a hang only: a loaded machine is slow
    try:
        for mode in MODES:
            wait_for_text(base / f"stop_{mode}" / "log_rank0.txt", SIGNAL_AT, procs)
            procs[1].send_signal(signal.SIGTERM)
    finally:
        end_pids([p.pid for p in procs], deadline)
    return base, _results(base / "job", 2, len(runs))


@pytest.fixture(scope="module")
def all_ranks_job(tiny_demo_root, tmp_path_factory):
    """Eager: SIGTERM to oneflow.distributed.launch leading its own process group (it passes SIGTERM to the group,
    then exits); graph: SIGTERM to both ranks. Each stopped run is resumed."""
    base = tmp_path_factory.mktemp("all")
    runs = []
    for mode in MODES:
        runs += [_run(tiny_demo_root, base / f"stop_{mode}", mode), _run(tiny_demo_root, base / f"stop_{mode}", mode,
                                                                          resume=True)]
    os.makedirs(base / "job")
    with open(base / "job" / "runs.json", "w") as f:
        json.dump(runs, f)
    job = [os.path.join(ROOT, "tests", "runs_job.py"), str(base / "job" / "runs.json"), str(base / "job")]
    launch = subprocess.Popen(launcher(2) + job, cwd=ROOT, start_new_session=True,
                              stdout=open(base / "launcher.out", "w"), stderr=subprocess.STDOUT,
                              env=dict(os.environ, GLOG_minloglevel="2"))
    deadline = time.time() + TIMEOUT + 180 * len(runs)  # against a hang only: a loaded machine is slow
    ranks = []
    try:
        wait_for_text(base / "stop_eager" / "log_rank0.txt", SIGNAL_AT, [launch])
        ranks = children(launch.pid)
        launch.send_signal(signal.SIGTERM)
        launch.wait(timeout=60)
        wait_for_text(base / "stop_graph" / "log_rank0.txt", SIGNAL_AT, [])
        for pid in ranks:
            os.kill(pid, signal.SIGTERM)
    finally:
        if launch.poll() is None:
            launch.kill()
        end_pids(ranks, deadline)
    return base, _results(base / "job", 2, len(runs)), launch.returncode, (base / "launcher.out").read_text()


def _max_diff(a_dir, b_dir):
    """Largest difference of the weights, EMA and AdamW moments of two checkpoints, and their step counts."""
    a, b = read_oneflow_checkpoint(a_dir), read_oneflow_checkpoint(b_dir)
    worst = 0.0
    for part in ("model", "ema"):
        for k, v in a[part].items():
            worst = max(worst, float(np.abs(v.numpy().astype(np.float64) - b[part][k].numpy()).max()))
    for i, st in a["optimizer"]["state"].items():
        if isinstance(st, dict):
            for k, v in st.items():
                worst = max(worst, float(np.abs(v.numpy().astype(np.float64) -
                                                b["optimizer"]["state"][i][k].numpy()).max()))
    return worst, (a["optimizer"]["state"]["step"], b["optimizer"]["state"]["step"])


def _check_stop_and_resume(out, stopped, resumed, reason, full):
    assert stopped and [r["code"] for r in stopped] == [EXIT_STOPPED] * 2, stopped and [r["stderr"][-2000:]
                                                                          for r in stopped]
    lines = [_stop_line(out, rank) for rank in (0, 1)]
    assert lines[0] == lines[1]  # every rank stopped at the same update, for the same reason
    why, epoch, update, batch = lines[0]
    assert why == reason and epoch == 0 and update >= 1 and batch == update
    # what `last` held when the resumed run read it (the same processes resume right away)
    resumed_from = re.search(r"resumed from \S+last: epoch (\d+), batch (\d+), update (\d+)",
                             (out / "log_rank0.txt").read_text())
    assert resumed_from and tuple(map(int, resumed_from.groups())) == (epoch, batch, update)
    assert resumed and [r["code"] for r in resumed] == [0, 0], resumed and [r["stderr"][-2000:] for r in resumed]
    worst, (steps_a, steps_b) = _max_diff(full / "last", out / "last")
    assert steps_a == steps_b == 4 and worst <= TOL, worst


@pytest.mark.distributed
@pytest.mark.timeout(900)  # the first pays for the module's job (135 s measured under load)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_sigterm_to_rank_1_only_stops_both_ranks_and_resumes_exactly(rank1_job, mode):
    base, results = rank1_job
    i = list(MODES).index(mode) * 3
    assert results[i] and [r["code"] for r in results[i]] == [0, 0], results[i]
    _check_stop_and_resume(base / f"stop_{mode}", results[i + 1], results[i + 2], "SIGTERM on rank 1",
                           base / f"full_{mode}")


@pytest.mark.distributed
@pytest.mark.timeout(900)  # the first pays for the module's job (135 s measured under load)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_sigterm_to_every_rank_stops_and_resumes_exactly(all_ranks_job, rank1_job, mode):
    base, results, launcher_code, launcher_out = all_ranks_job
    i = list(MODES).index(mode) * 2
    _check_stop_and_resume(base / f"stop_{mode}", results[i], results[i + 1], "SIGTERM on all 2 ranks",
                           rank1_job[0] / f"full_{mode}")
    if mode == "eager":  # OneFlow 0.9.0's launcher: SIGTERM -> os.killpg(its group, SIGTERM), exit 1 at once
        assert launcher_code == 1 and "Killing subprocess" in launcher_out, launcher_out[-2000:]


@pytest.mark.distributed
def test_a_nan_on_rank_1_only_is_skipped_by_both_ranks_at_the_same_update(tiny_demo_root, tmp_path):
    res = run_bounded(launcher(2) + [os.path.join(ROOT, "tests", "nonfinite_job.py"), tiny_demo_root, str(tmp_path)],
                      capture_output=True, text=True, timeout=TIMEOUT + 120, env=dict(os.environ, GLOG_minloglevel="2"))
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for mode in MODES:
        r0, r1 = ranks[0][mode], ranks[1][mode]
        assert r0 == r1, mode  # the same updates, skips, log lines
        assert r0["updates"] == 3 and r0["skips"] == 1, (mode, r0)
        assert len(r0["skipped"]) == 1 and r0["skipped"][0].startswith("epoch 0 update 2: non-finite"), (mode, r0)
        assert r0["agree"] == ["epoch 0: replicas agree within 0"], (mode, r0)

@pytest.mark.slow

def test_sigterm_to_the_whole_process_group_reaches_the_loader_workers_too(tiny_demo_root, tmp_path):
    """A launcher leading its group (or a scheduler) signals every process, DataLoader workers included: they must
    not die (OneFlow's exit on SIGTERM) before the training process stops at its next update boundary. 8
    micro-batches per update outrun the workers' prefetching."""
    out = tmp_path / "run"
    opts = {"train.epochs": 2, "data.limit_train_batches": 0, "data.num_workers": 2, "train.batch_size": 32,
            "train.grad_accum_steps": 8}
    proc = subprocess.Popen([sys.executable, *train_cmd(tiny_demo_root, out, **opts)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, GLOG_minloglevel="2"))
    try:
        wait_for_text(out / "log_rank0.txt", "epoch 0 update 1:", [proc])
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        code, _, stderr = _finish(proc)
    assert code == EXIT_STOPPED, stderr[-2000:]
    assert _stop_line(out)[2] == read_oneflow_checkpoint(out / "last")["updates"]
