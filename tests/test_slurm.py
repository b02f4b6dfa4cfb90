"""Ranks from SLURM (``oneflow_posmlp/slurm.py``): the node-list parser, the variables it maps, and two processes
started with SLURM's variables only (as ``srun`` starts them, no launcher) training to the weights of a
``oneflow.distributed.launch`` run. That launcher run also shows what OneFlow 0.9.0's launcher does with a
SIGTERM when it does not lead its process group (docs/cluster.md): it says it kills its workers and exits, but
``os.killpg(its pid)`` reaches no one, and the workers train to the end."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from launch import ROOT, TIMEOUT, children, end_pids, launcher, run_bounded, train_cmd, wait_for_text
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.slurm import MARK, apply_slurm_env, expand_nodelist, first_host, slurm_env


@pytest.mark.parametrize("text,hosts", [
    ("node7", ["node7"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[08-10]", ["n08", "n09", "n10"]),
    ("gpu-[008-009]-ib,login", ["gpu-008-ib", "gpu-009-ib", "login"]),
    ("rack[1-2]-gpu[01-02]", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"]),
    ("x[3],y[5-6]z", ["x3", "y5z", "y6z"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
])
def test_nodelist_expands_compressed_forms(text, hosts):
    assert expand_nodelist(text) == hosts and first_host(text) == hosts[0]


@pytest.mark.parametrize("text", ["", "node[1-", "node]1", "node[a-b]", "node[3-1]", "a,,b", "a[[1]]", "n[1,]"])
def test_malformed_nodelists_are_refused(text):
    with pytest.raises(ValueError, match="malformed SLURM node list"):
        expand_nodelist(text)


SRUN = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "node[01-02]",
        "SLURM_JOB_ID": "123456"}


def test_srun_variables_map_to_oneflows():
    assert slurm_env(SRUN) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node01",
                               "MASTER_PORT": str(12000 + 123456 % 20000)}
    step = dict(SRUN, SLURM_STEP_NUM_TASKS="4", SLURM_STEP_NODELIST="node[07-08]")  # a step on part of the job
    assert slurm_env(step)["WORLD_SIZE"] == "4" and slurm_env(step)["MASTER_ADDR"] == "node07"
    given = slurm_env(dict(SRUN, MASTER_ADDR="10.0.0.1", MASTER_PORT="29500"))
    assert "MASTER_ADDR" not in given and "MASTER_PORT" not in given  # what is set stays


@pytest.mark.parametrize("visible,local", [
    (None, "1"),             # no binding: the task sees the node's GPUs, its device is its local id
    ("0,1,2,3", "1"),        # all of the node's GPUs visible (sbatch --gpus-per-node=4)
    ("5", "0"),              # one GPU bound to the task (--gpus-per-task=1, --gpu-bind=single:1): it is device 0
    ("GPU-8f2c4e10", "0"),   # ... named by UUID
    ("", "1"),               # no GPU at all (a CPU run): the local id
])
def test_local_rank_follows_the_visible_devices(visible, local):
    env = dict(SRUN) if visible is None else dict(SRUN, CUDA_VISIBLE_DEVICES=visible)
    assert slurm_env(env)["LOCAL_RANK"] == local


@pytest.mark.parametrize("env", [{}, dict(SRUN, RANK="0"), dict(SRUN, WORLD_SIZE="8"), {"SLURM_JOB_ID": "5"}])
def test_nothing_is_mapped_under_a_launcher_or_outside_slurm(env):
    environ = dict(env)
    assert apply_slurm_env(environ) == {} and environ == env


@pytest.mark.parametrize("env,needle", [
    (dict(SRUN, SLURM_PROCID="8"), "SLURM_PROCID 8 is outside the 8 tasks"),
    ({k: v for k, v in SRUN.items() if k != "SLURM_JOB_NODELIST"}, "no SLURM_JOB_NODELIST"),
    (dict(SRUN, SLURM_JOB_ID="12_3"), "SLURM_JOB_ID is not a number"),
    (dict(SRUN, SLURM_PROCID="x"), "SLURM_PROCID='x' is not a number"),
    (dict(SRUN, SLURM_NTASKS="eight"), "SLURM_NTASKS='eight' is not a number"),
])
def test_inconsistent_slurm_variables_are_an_error(env, needle):
    with pytest.raises(ValueError, match=needle):
        slurm_env(env)


def test_apply_sets_the_variables_and_marks_the_process():
    environ = dict(SRUN)
    assert apply_slurm_env(environ)["RANK"] == "3"
    assert environ["RANK"] == "3" and environ["MASTER_ADDR"] == "node01" and environ[MARK] == "1"


def test_the_tool_names_a_bad_node_list_before_importing_oneflow(tiny_demo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    res = run_bounded([sys.executable, *train_cmd(tiny_demo_root, tmp_path)], cwd=ROOT, capture_output=True,
                      text=True, timeout=120, env=dict(env, SLURM_PROCID="0", SLURM_NTASKS="2",
                                                       SLURM_JOB_NODELIST="node[1-", SLURM_JOB_ID="7"))
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == (
        "error: malformed SLURM node list 'node[1-': unbalanced '['")


# ----------------------------------------------------------------- 2 processes
OPTS = {"train.epochs": 1, "data.limit_train_batches": 0, "train.ema": "true", "aug.mixup": 0.8, "aug.cutmix": 1.0,
        "model.drop_path_rate": 0.1}


def _port_of_free_job_id():
    """A SLURM_JOB_ID whose derived port is free here."""
    start = int(time.time() * 1000) % 20000
    for i in range(200):
        job = 7000000 + start + i
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 12000 + job % 20000))
            except OSError:
                continue
        return job
    raise AssertionError("no free port in 12000-31999")


@pytest.fixture(scope="module")
def launcher_run(tiny_demo_root, tmp_path_factory):
    """The demo on 2 ranks through oneflow.distributed.launch, started as a child of this process (so not the
    leader of its process group), which gets SIGTERM after the first update."""
    out = tmp_path_factory.mktemp("launcher")
    proc = subprocess.Popen(launcher(2) + train_cmd(tiny_demo_root, out / "run", **OPTS), cwd=ROOT,
                         stdout=open(out / "launcher.out", "w"), stderr=subprocess.STDOUT,
                         env=dict(os.environ, GLOG_minloglevel="2"))
    deadline, ranks = time.time() + TIMEOUT, []
    try:
        wait_for_text(out / "run" / "log_rank0.txt", "epoch 0 update 1:", [proc])
        ranks = children(proc.pid)
        assert os.getpgid(proc.pid) != proc.pid  # not a group leader
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        end_pids(ranks, deadline)  # the ranks train on: wait for their end
    return out, proc.returncode, (out / "launcher.out").read_text(), ranks


@pytest.mark.distributed
def test_sigterm_to_a_launcher_that_does_not_lead_its_group_misses_the_workers(launcher_run):
    out, code, text, ranks = launcher_run
    assert code == 1 and all(f"Killing subprocess {p}" in text for p in ranks) and len(ranks) == 2
    assert "Main process received SIGTERM, exiting" in text
    log = (out / "run" / "log_rank0.txt").read_text()
    assert "done: 1 epochs" in log and "stopped" not in log  # the workers never saw the signal
    assert read_oneflow_checkpoint(out / "run" / "last")["updates"] == 4


@pytest.mark.distributed
def test_two_processes_with_only_slurm_variables_train_as_the_launcher_run(launcher_run, tiny_demo_root, tmp_path):
    ref = launcher_run[0] / "run" / "last"
    job = _port_of_free_job_id()
    launched = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launched and not k.startswith("SLURM_")}
    procs = [subprocess.Popen([sys.executable, *train_cmd(tiny_demo_root, tmp_path / "run", **OPTS)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(env, GLOG_minloglevel="2", SLURM_PROCID=str(r), SLURM_LOCALID=str(r),
                                    SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.[1-2]", SLURM_JOB_ID=str(job)))
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert f"ranks from SLURM, rank 0 at 127.0.0.1:{12000 + job % 20000}" in outs[0][0]
    a, b = read_oneflow_checkpoint(ref), read_oneflow_checkpoint(tmp_path / "run" / "last")
    assert a["updates"] == b["updates"] == 4
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert np.abs(v.numpy().astype(np.float64) - b[part][k].numpy()).max() <= 1e-6, (part, k)
