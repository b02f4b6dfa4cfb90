"""Ranks from SLURM: ``srun python tools/train.py ...`` (one task per device) without a launcher.

OneFlow 0.9.0 reads ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK`` when it is imported
(``oneflow/framework/env_util.py``: all four, or it runs as one process) and ``LOCAL_RANK`` in its C++ runtime (the
device of the rank); ``oneflow.distributed.launch`` sets these five for every process it starts. When ``RANK``
and ``WORLD_SIZE`` are both unset but SLURM describes the task, :func:`apply_slurm_env` sets them, before OneFlow
is imported (the tools call it first: ``oneflow_posmlp.cli.run``):

=============== ===============================================================================================
``RANK``        ``SLURM_PROCID``
``WORLD_SIZE``  ``SLURM_STEP_NUM_TASKS`` (the step's tasks), else ``SLURM_NTASKS``
``LOCAL_RANK``  ``0`` when ``CUDA_VISIBLE_DEVICES`` names one device (SLURM bound one GPU to the task:
                ``--gpus-per-task=1``, ``--gpu-bind=single:1``), else ``SLURM_LOCALID`` (the task sees the
                node's GPUs); OneFlow takes the process's device from it (:func:`local_rank`)
``MASTER_ADDR`` the first host of ``SLURM_STEP_NODELIST``, else of ``SLURM_JOB_NODELIST`` (``SLURM_NODELIST``),
                compressed forms included (``node[01-04,07]``, ``a[1-2],b3``, ``rack[1-2]-gpu[01-08]``)
``MASTER_PORT`` ``MASTER_PORT`` if set, else ``12000 + SLURM_JOB_ID % 20000`` (below Linux's ephemeral ports; two
                steps of one job on the same node need their own ``MASTER_PORT``)
=============== ===============================================================================================

Variables already set are kept; with ``RANK`` or ``WORLD_SIZE`` set (a launcher, or by hand) nothing is changed.
Standard library only: importing this module must not import OneFlow.
"""
import os
import re

MARK = "POSMLP_RANKS_FROM_SLURM"  # set on the processes whose ranks came from SLURM (the trainer says so)
PORT_BASE, PORT_SPAN = 12000, 20000


def expand_nodelist(text):
    """The host names of a SLURM node list, in order: ``"node[01-03,07],gpu5"`` -> ``["node01", "node02", "node03",
    "node07", "gpu5"]``. Ranges keep their zero padding; several bracket groups in one name expand left to right
    (``r[1-2]-n[1-2]`` -> ``r1-n1, r1-n2, r2-n1, r2-n2``). ValueError for a malformed list."""
    hosts = []
    for item in _split_top(text.strip()):
        names = [""]
        for literal, group in re.findall(r"([^\[\]]*)(?:\[([^\[\]]*)\])?", item):
            if "[" in literal or "]" in literal:
                raise ValueError(f"malformed SLURM node list {text!r}")
            names = [n + literal for n in names]
            if group:
                names = [n + v for n in names for v in _expand_group(group, text)]
        hosts.extend(n for n in names if n)
    if not hosts or any(c in "".join(hosts) for c in "[]"):
        raise ValueError(f"malformed SLURM node list {text!r}")
    return hosts


def first_host(text):
    """The first host of a SLURM node list (the node of rank 0 when tasks are placed in order: srun's default
    block distribution)."""
    return expand_nodelist(text)[0]


def _split_top(text):
    """Split at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"malformed SLURM node list {text!r}: nested brackets")
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"malformed SLURM node list {text!r}: unbalanced ']'")
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"malformed SLURM node list {text!r}: unbalanced '['")
    items.append(text[start:])
    if any(not item for item in items):
        raise ValueError(f"malformed SLURM node list {text!r}: empty entry")
    return items


def _expand_group(group, text):
    values = []
    for part in group.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise ValueError(f"malformed SLURM node list {text!r}: {part!r} is not a number or a range")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"malformed SLURM node list {text!r}: range {part!r} runs backwards")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 1
        values.extend(str(v).zfill(width) for v in range(int(lo), int(hi) + 1))
    return values


def local_rank(env):
    """This task's ``LOCAL_RANK``, OneFlow's index of its CUDA device among the devices it sees: ``"0"`` when
    ``CUDA_VISIBLE_DEVICES`` names exactly one device (the task's own GPU, whatever its ``SLURM_LOCALID``), else
    ``SLURM_LOCALID`` (None without it). OneFlow 0.9.0's placements put rank r on device r mod ranks-per-node
    whatever this says, so a multi-rank run needs every task to see all GPUs of its node
    (``oneflow_posmlp/parallel/devices.py``, docs/cluster.md)."""
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) == 1:
        return "0"
    return env.get("SLURM_LOCALID")


def slurm_env(environ=None):
    """The variables :func:`apply_slurm_env` would set (``{}`` when it does not apply). ValueError when SLURM's
    variables are inconsistent (a rank outside the world, no node list, a malformed one)."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env:
        return {}
    tasks = "SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"  # the step's, else the job's
    if "SLURM_PROCID" not in env or not env.get(tasks):
        return {}
    rank = _int(env, "SLURM_PROCID")
    world = _int(env, tasks)
    if not 0 <= rank < world:
        raise ValueError(f"SLURM_PROCID {rank} is outside the {world} tasks of the step")
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    out = {"RANK": str(rank), "WORLD_SIZE": str(world)}
    local = local_rank(env)
    if local is not None:
        out["LOCAL_RANK"] = local
    if "MASTER_ADDR" not in env:
        if not nodes:
            raise ValueError("SLURM_PROCID is set but no SLURM_JOB_NODELIST (or SLURM_STEP_NODELIST) to find rank "
                             "0's node; set MASTER_ADDR")
        out["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in env:
        job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        if not job or not job.isdigit():
            raise ValueError("SLURM_PROCID is set but SLURM_JOB_ID is not a number to derive a port from; set "
                             "MASTER_PORT")
        out["MASTER_PORT"] = str(PORT_BASE + int(job) % PORT_SPAN)
    return out


def _int(env, name):
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"{name}={env[name]!r} is not a number (SLURM sets it to the task's number); unset it or "
                         f"start the task with srun") from None


def apply_slurm_env(environ=None):
    """Set OneFlow's rank variables from SLURM's where they apply (module docstring); returns what was set. Call
    it before ``import oneflow``; it does nothing once OneFlow is imported (the values would be ignored)."""
    import sys

    env = os.environ if environ is None else environ
    if environ is None and "oneflow" in sys.modules:
        return {}
    values = slurm_env(env)
    if values:
        env.update(values)
        env[MARK] = "1"
    return values
