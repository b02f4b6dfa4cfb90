"""The ranks meet before OneFlow starts (``oneflow_posmlp/rendezvous.py``): a start whose ranks do not all arrive
ends within ``dist.init_timeout`` in one ``error:`` line naming them (exit 2) instead of hanging in OneFlow's
join; in-process, two ranks meet, rank 1 waits for rank 0's OneFlow port, and a mismatch is named."""
import os
import socket
import sys
import threading
import time

import pytest

from launch import ROOT, free_port, run_bounded, train_cmd
from oneflow_posmlp.rendezvous import JoinError, join, world_of

NOT_LAUNCHED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def _alone(root, out, **slurm):
    """tools/train.py started as one task of a 2-task SLURM step whose other task never starts."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_LAUNCHED}
    env.update(SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.1", MASTER_PORT=str(free_port()), GLOG_minloglevel="2",
               **slurm)
    start = time.time()
    res = run_bounded([sys.executable, *train_cmd(root, out, "dist.init_timeout=3")], capture_output=True, text=True,
                      timeout=120, env=env)
    return res, time.time() - start, env["MASTER_PORT"]


def test_rank_0_alone_names_the_missing_rank_within_the_timeout(tiny_demo_root, tmp_path):
    res, seconds, port = _alone(tiny_demo_root, tmp_path, SLURM_PROCID="0")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-2000:]
    assert lines[0] == f"rank 0 of 2 waiting for the others at 127.0.0.1:{port}, ranks from SLURM"
    assert lines[-1].startswith(f"error: rank 1 of 2 did not arrive within dist.init_timeout 3 s at 127.0.0.1:{port}, "
                                f"ranks from SLURM; check that every task started"), lines
    assert len(lines) == 2 and seconds < 60  # (3 s of waiting, the rest is Python's start-up; OneFlow never ran)


def test_rank_1_alone_says_it_cannot_reach_rank_0(tiny_demo_root, tmp_path):
    res, _, port = _alone(tiny_demo_root, tmp_path, SLURM_PROCID="1")
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"error: rank 1 of 2 could not reach rank 0 within dist.init_timeout 3 s at 127.0.0.1:{port}, ranks from SLURM")


def _env(rank, world, port):
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _rank(rank, world, port, results, timeout=20, said=None):
    try:
        join(timeout, "RANK/WORLD_SIZE", environ=_env(rank, world, port), log=(said if said is not None else []).append)
        results[rank] = "joined"
    except JoinError as err:
        results[rank] = err


def test_three_ranks_meet_and_the_others_wait_for_rank_0s_port(monkeypatch):
    monkeypatch.delitem(sys.modules, "oneflow", raising=False)  # (join does nothing once OneFlow is imported)
    port, results, said = free_port(), {}, []
    others = [threading.Thread(target=_rank, args=(r, 3, port, results)) for r in (1, 2)]
    for t in others:
        t.start()
    time.sleep(0.5)  # the others start first and retry
    _rank(0, 3, port, results, said=said)
    assert results[0] == "joined" and said == [f"rank 0 of 3 waiting for the others at 127.0.0.1:{port}, ranks from "
                                               f"RANK/WORLD_SIZE"]
    time.sleep(0.5)
    assert all(t.is_alive() for t in others)  # told to go, they wait for OneFlow's service on the port
    with socket.create_server(("127.0.0.1", port)):  # what rank 0's OneFlow opens
        for t in others:
            t.join(timeout=10)
    assert results == {0: "joined", 1: "joined", 2: "joined"}


def test_a_rank_started_with_another_world_size_is_named(monkeypatch):
    monkeypatch.delitem(sys.modules, "oneflow", raising=False)
    port, results = free_port(), {}
    other = threading.Thread(target=_rank, args=(1, 3, port, results))
    other.start()
    _rank(0, 2, port, results)
    other.join(timeout=30)
    assert str(results[0]) == "rank 1 was started with WORLD_SIZE 3, rank 0 with 2: start all ranks alike"
    assert isinstance(results[1], JoinError) and results[1].quiet  # rank 0 says it, once


def test_one_process_or_no_launcher_variables_need_no_meeting():
    assert world_of({}) is None
    assert world_of({**_env(0, 1, 1234)}) is None
    with pytest.raises(JoinError, match="RANK='x' is not a number"):
        world_of({**_env(0, 2, 1234), "RANK": "x"})
