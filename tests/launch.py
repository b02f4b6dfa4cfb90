"""Helpers for tests that launch ``tools/train.py`` / ``tools/eval.py`` on 1..4 local ranks (every launch has a
timeout, so a collective that one rank misses fails the test instead of hanging it).

A launch costs seconds before any work (the launcher and every rank import OneFlow and start its runtime), so
tests that check several runs of one rank count launch them together: :func:`run_many` runs several tool
command lines one after another in the same launched processes (``tests/runs_job.py``)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np

from conftest import tiny_train_opts
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bounded(cmd, timeout=TIMEOUT, check=False, **kw):
    """``subprocess.run(cmd, timeout=timeout, ...)`` in a session of its own, whose whole process group is killed
    when the timeout passes, or when the wait is interrupted (the test's own deadline, pytest-timeout, raises in
    it; Ctrl-C): ``subprocess.run`` kills only the launcher, and its ranks (which ignore a first SIGTERM while
    training) would train on as orphans, slowing every later test."""
    kw.setdefault("cwd", ROOT)
    if kw.pop("capture_output", False):
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with subprocess.Popen(cmd, start_new_session=True, **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err)
        except BaseException:
            _kill_group(proc)
            raise
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check:
        res.check_returncode()
    return res


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launcher(ranks, port=None):
    if ranks == 1:
        return [sys.executable]
    return [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(ranks),
            "--master_port", str(port or free_port())]


def train_argv(root, out, *opts, **extra):
    """The arguments of ``tools/train.py`` for a 3-update run of configs/demo.yaml on ``root``."""
    extra = {"train.epochs": 1, "data.limit_train_batches": 3, "train.ema": "false", **extra}
    return ["-c", "configs/demo.yaml", "--output", str(out), "--opts", *tiny_train_opts(root, **extra), *opts]


def train_cmd(root, out, *opts, **extra):
    return [os.path.join(ROOT, "tools", "train.py"), *train_argv(root, out, *opts, **extra)]


def run(cmd, expect_ok=True):
    res = run_bounded(cmd, capture_output=True, text=True, env=dict(os.environ, GLOG_minloglevel="2"))
    if expect_ok:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def train(root, out, ranks, *opts, **extra):
    return run(launcher(ranks) + train_cmd(root, out, *opts, **extra))


def run_many(ranks, runs, out):
    """Run ``runs`` (``[{"tool": "train.py", "argv": [...], "expect_error": bool}, ...]``) one after another in one
    launch of ``ranks`` processes. Returns ``(results, job)``: per run, the list of per-rank
    ``{"code", "stdout", "stderr"}`` (None for a run the job did not reach: it failed or timed out), and a
    description of the job's end for assertion messages."""
    os.makedirs(out, exist_ok=True)
    spec = os.path.join(out, "runs.json")
    with open(spec, "w") as f:
        json.dump(runs, f)
    try:
        res = run_bounded(launcher(ranks) + [os.path.join(ROOT, "tests", "runs_job.py"), spec, str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT + 90 * len(runs),
                          env=dict(os.environ, GLOG_minloglevel="2"))
        job = f"job of {len(runs)} runs on {ranks} rank(s) exited {res.returncode}: {res.stderr[-3000:]}"
    except subprocess.TimeoutExpired as exc:
        job = f"job of {len(runs)} runs on {ranks} rank(s) timed out: {(exc.stderr or b'')[-3000:]!r}"
    per_rank = []
    for r in range(ranks):
        path = os.path.join(out, f"rank{r}.json")
        per_rank.append(json.load(open(path)) if os.path.isfile(path) else [])
    results = [[done[i] if i < len(done) else None for done in per_rank] for i in range(len(runs))]
    return [None if None in ranks_done else ranks_done for ranks_done in results], job


def updates(out, grad_norm=True):
    """``[(update, loss, grad_norm), ...]`` as logged by rank 0 (4 decimals for the loss, 3 for the norm; a graph
    logs the norm as nan: pass ``grad_norm=False`` to accept it)."""
    text = open(os.path.join(out, "log_rank0.txt")).read()
    norm = r"([\d.]+)" if grad_norm else r"(\S+)"
    return re.findall(r"update (\d+): loss ([\d.]+) lr \S+ grad_norm " + norm, text)


def max_state_diff(a_dir, b_dir):
    """Largest absolute difference of model weights and optimizer moments between two training checkpoints."""
    a, b = read_oneflow_checkpoint(a_dir), read_oneflow_checkpoint(b_dir)
    worst = max(np.abs(v.numpy().astype(np.float64) - b["model"][k].numpy()).max() for k, v in a["model"].items())
    for idx, st in a["optimizer"]["state"].items():
        if isinstance(st, dict):
            for k, v in st.items():
                worst = max(worst, float(np.abs(v.numpy().astype(np.float64) - b["optimizer"]["state"][idx][k].numpy()).max()))
    return worst


def wait_for_text(path, text, procs, timeout=TIMEOUT):
    """Poll ``path`` until it holds ``text`` (e.g. a log line after which a test sends a signal); fail if one of
    ``procs`` (Popen objects) ends first or ``timeout`` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.isfile(path) and text in open(path).read():
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a process ended before {text!r} appeared in {path}")
        time.sleep(0.02)
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")


def children(pid):
    """The pids of the child processes of ``pid`` (the ranks a launcher started)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def alive(pid):
    """Whether ``pid`` runs (a process that is not this one's child: a launcher's orphaned rank)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().rsplit(") ", 1)[1].startswith("Z")  # a zombie has ended
    except FileNotFoundError:
        return False


def end_pids(pids, deadline):
    """Wait until ``pids`` have ended; SIGKILL what is left at ``deadline`` (``time.time()``)."""
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    for p in pids:
        if alive(p):
            os.kill(p, signal.SIGKILL)
