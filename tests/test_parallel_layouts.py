"""Tensor, pipeline and 2-D (data x tensor) parallelism, eager and nn.Graph, against one eager process.

Each layout runs tools/train.py for 3 AdamW updates (lr warm-up, clipping at 1.0, drop path 0.1, the demo's
BN-free variant: ``model.stem_norm=LN``, because BatchNorm under data parallelism normalises per rank like DDP
without SyncBN; cut to its first 2 levels except in the 2-D graph, see TWO_LEVELS) and must log the same loss
(and, eagerly, gradient norm) at every update as one eager process, and end with the same weights and AdamW
moments within 1e-6: drop-path masks are drawn per sample of the global batch from the step's seed, so every
layout drops what one process drops (models/drop.py).
Tensor parallelism runs in both ``dist.tensor_parallel_mode``s: ``groups`` (the default: gating units split by
channel groups) on 2 and 4 ranks, eager and graph, with PoSGU and with the SGU baseline (whose LayerNorm reduces
its statistics across ranks), and ``gather`` on 2 ranks, eager and graph.
Every layout family also trains with all the shipped recipes' regularizers on (drop path, dropout,
Mixup/CutMix, RandAugment, EMA), eagerly and as a graph; there the runs cannot equal one process (dropout
and Mixup draw per data-parallel shard), so they must finish with finite losses and replicas that agree. Without
data parallelism they can: with the recipe the groups plan on 2 and 4 ranks equals one process (dropout off:
its global masks come from another generator than one process's) and the gather plan (dropout on), weights,
AdamW moments and EMA weights, in checkpoints of the same keys and shapes.
The shipped ImageNet configs start on 2 ranks, shrunk to a tiny model through ``--opts``. A two-node launch runs with the
second node in a network namespace (root only; skipped elsewhere). Graph runs are held to an eager
process with the graph's semantics (OneFlow's lr schedule, per-group clipping); the pipeline runs 2
micro-batches per update through its stages (gradient accumulation). Checkpoints are gathered to complete tensors, so a
tensor-parallel checkpoint resumes in a data-parallel run and in one process, and evaluates in one process.

The runs of one rank count are launched together (one launch per rank count, ``tests/runs_job.py``: process
start-up costs seconds per rank) and each test asserts its own runs.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from launch import ROOT, free_port, max_state_diff, run_bounded, run_many, train_argv, train_cmd, updates
from oneflow_posmlp.checkpoint import read_oneflow_checkpoint
from oneflow_posmlp.models import build_model
from oneflow_posmlp.parallel import LayoutError
from oneflow_posmlp.parallel.pipeline import level_stages, module_stages
from oneflow_posmlp.parallel.tensor_parallel import check_tensor_parallel

# the first test to ask for a rank count's runs pays for its whole job (430 s for the 2-rank one, measured on the
# shared 2-core machine under load): past the 300 s default deadline
pytestmark = [pytest.mark.distributed, pytest.mark.timeout(1200)]
TOL = 1e-6
GRAPH = ("train.graph=true",)
# the eager run a graph run must equal: OneFlow's schedule and per-group clipping, as inside a graph
EAGER_AS_GRAPH = ("train.scheduler=oneflow", "train.clip_scope=group")
# The layout checks (equal to one process, checkpoints across layouts) train a 2-level cut of the demo model: its
# level 1 downsamples (every level after the first does) and is where a 2-stage pipeline splits, as level 2 is
# in the 4-level model, and every block gets the same tensor-parallel plan; compiling it as a graph costs half of
# the 4-level model's (2.5 s vs 5.7 s on one rank). The recipe runs below train the 4-level demo model in every
# layout family (RECIPE_TWO_LEVELS).
TWO_LEVELS = ("model.num_levels=2", "model.embed_dims=[16,32]", "model.depths=[1,1]", "model.win_size=[4,4]",
              "model.gamma=[2,4]", "model.mlp_ratio=[4,4]")
DROP_PATH = ("model.stem_norm=LN", "model.drop_path_rate=0.1")
# The tensor-parallel layouts run the default dist.tensor_parallel_mode (groups: the gating units split by channel
# groups); GATHER the old plan (hidden activations gathered, gating units whole on every rank). 4 tensor-parallel
# ranks split the 2-level cut's gamma [2, 4] unevenly: those runs (and their references) take gamma [4, 4]; SGU
# runs (the baseline gating unit, whose LayerNorm reduces its statistics over the ranks) take gate_unit sgu.
GATHER = ("dist.tensor_parallel_mode=gather",)
GAMMA4 = ("model.gamma=[4,4]",)
SGU = ("model.gate_unit=sgu",)
MICRO = ("train.grad_accum_steps=2", "data.limit_train_batches=4")  # 2 updates of 2 micro-batches
LAYOUTS = {  # name: (ranks, options, options of the one-process reference)
    "eager_tensor_parallel_2": (2, ("dist.tensor_parallel=2",), ()),
    "eager_tensor_parallel_2_gather": (2, ("dist.tensor_parallel=2",) + GATHER, ()),
    "eager_tensor_parallel_4": (4, ("dist.tensor_parallel=4",), ()),
    "eager_tensor_parallel_2_sgu": (2, ("dist.tensor_parallel=2",), ()),
    "eager_pipeline_parallel_2": (2, ("dist.pipeline_parallel=2",), ()),
    "eager_data2_x_tensor2": (4, ("dist.data_parallel=2", "dist.tensor_parallel=2"), ()),
    "graph_one_rank": (1, GRAPH, EAGER_AS_GRAPH),
    "graph_data_parallel_2_checkpointing": (2, GRAPH + ("dist.data_parallel=2", "dist.activation_checkpointing=[0,1]"),
                                            EAGER_AS_GRAPH),
    "graph_tensor_parallel_2": (2, GRAPH + ("dist.tensor_parallel=2",), EAGER_AS_GRAPH),
    "graph_tensor_parallel_2_gather": (2, GRAPH + ("dist.tensor_parallel=2",) + GATHER, EAGER_AS_GRAPH),
    "graph_tensor_parallel_4": (4, GRAPH + ("dist.tensor_parallel=4",), EAGER_AS_GRAPH),
    "graph_tensor_parallel_4_sgu": (4, GRAPH + ("dist.tensor_parallel=4",), EAGER_AS_GRAPH),
    "graph_pipeline_2_micro_batches": (2, GRAPH + MICRO + ("dist.pipeline_parallel=2",), EAGER_AS_GRAPH + MICRO),
    "graph_data2_x_tensor2": (4, GRAPH + ("dist.data_parallel=2", "dist.tensor_parallel=2"), EAGER_AS_GRAPH),
}
FOUR_LEVELS = {"graph_data2_x_tensor2"}  # OneFlow 0.9.0 aborts this graph on the 2-level model (docs/parallel.md)


def model_opts(layout):
    """The model options of a layout's run (and of its one-process reference)."""
    if layout in FOUR_LEVELS:
        return ()
    return (TWO_LEVELS + (GAMMA4 if "tensor_parallel_4" in layout else ())
            + (SGU if layout.endswith("_sgu") else ()))


# one-process reference runs: (model options, options) -> run name
REFERENCES = {key: f"one_rank_{i}" for i, key in enumerate(dict.fromkeys(
    (model_opts(name), ref) for name, (_, _, ref) in LAYOUTS.items()))}

# what the shipped ImageNet recipes regularize with (configs/posmlp_{t,s,b}.yaml), on the demo model
RECIPE = ("model.drop_path_rate=0.1", "model.drop_rate=0.1", "aug.mixup=0.5", "aug.cutmix=1.0",
          "aug.auto_augment=rand-m6-n3-mstd1.0-inc1", "aug.color_jitter=0.4", "train.ema=true")
FAMILIES = {  # name: (ranks, options)
    "data_parallel_2": (2, ()),
    "tensor_parallel_2": (2, ("dist.tensor_parallel=2",)),
    "pipeline_parallel_2": (2, ("dist.pipeline_parallel=2",)),
    "data2_x_tensor2": (4, ("dist.data_parallel=2", "dist.tensor_parallel=2")),
}
MODES = {"eager": (), "graph": GRAPH}
# Every family trains the 4-level demo model eagerly, and the data-parallel and 2-D graphs do too; the tensor- and
# pipeline-parallel graphs (their 4-level model is compiled in the 2-D graph and split into stages eagerly) run the
# 2-level cut.
RECIPE_TWO_LEVELS = {"recipe_tensor_parallel_2_graph", "recipe_pipeline_parallel_2_graph"}
# The tensor-parallel runs of the recipe against each other and one process, on the 4-level demo model with gamma
# that 4 ranks split: with every regularizer but dropout they equal one process; with dropout too (a global
# tensor's masks are drawn from another generator than one process's fused dropout, equal across tensor-parallel
# layouts) the groups plan on 2 and 4 ranks equals the gather plan.
# The LayerNorm stem as in the layout checks: the BatchNorm stem's convolution biases get gradients that are float
# noise (BatchNorm removes a bias), which AdamW normalises into full-size steps of either sign (measured: 2.4e-6 in
# 2 updates, in both tensor-parallel modes against one process).
TP_RECIPE_MODEL = ("model.gamma=[4,4,8,16]", "model.stem_norm=LN", "data.limit_train_batches=2")
NO_DROPOUT = ("model.drop_rate=0",)
TP_RECIPE = {  # name: (ranks, options, the run it must equal)
    "tp_recipe_one_rank": (1, NO_DROPOUT, None),
    "tp_recipe_groups_2_no_dropout": (2, NO_DROPOUT + ("dist.tensor_parallel=2",), "tp_recipe_one_rank"),
    "tp_recipe_gather_2": (2, ("dist.tensor_parallel=2",) + GATHER, None),
    "tp_recipe_groups_2": (2, ("dist.tensor_parallel=2",), "tp_recipe_gather_2"),
    "tp_recipe_groups_4": (4, ("dist.tensor_parallel=4",), "tp_recipe_gather_2"),
}

SHRINK = ("model.img_size=32", "model.embed_dims=[16,32,64,128]", "model.depths=[1,1,1,1]",
          "model.win_size=[4,4,2,1]", "model.gamma=[2,4,8,16]", "model.num_classes=4", "dist.device=cpu",
          "train.amp=false", "data.num_workers=0", "data.demo=false", "train.batch_size=8", "train.epochs=1",
          "data.limit_train_batches=1", "train.warmup_epochs=0", "log.progress=false", "train.log_interval=1")
TP_CHECKPOINT = ("model.stem_norm=LN", *TWO_LEVELS)
SHIPPED = ("posmlp_t", "posmlp_s", "posmlp_b")
TWO_EPOCHS = {"train.epochs": 2}


class Runs:
    """Every run of this module, launched together per rank count (``launch.run_many``: one launch and one
    OneFlow start-up per rank count) when a test first asks for one of them; each test asserts its own runs,
    so a failure names the layout that broke. The tensor-parallel checkpoint of the 2-rank job is resumed in
    that job (on 2 data-parallel ranks) and, after it, in one process (:func:`resumed_in_one_process`)."""

    def __init__(self, root, base):
        self.root, self.base = root, base
        self.specs = {1: {}, 2: {}, 4: {}}  # ranks: {name: run}, in launch order
        self.done = {}  # ranks: (results, job)
        for (model, opts), name in REFERENCES.items():
            self.add(name, 1, *DROP_PATH, *model, *opts)
        for name, (ranks, opts, _) in LAYOUTS.items():
            self.add(name, ranks, *DROP_PATH, *model_opts(name), *opts)
        for name, (ranks, opts, _) in TP_RECIPE.items():
            self.add(name, ranks, *RECIPE, *TP_RECIPE_MODEL, *opts)
        self.add("tp_checkpoint_reference", 1, *TP_CHECKPOINT, **TWO_EPOCHS)
        self.add("tp_checkpoint", 2, *TP_CHECKPOINT, "dist.tensor_parallel=2")
        self.add("tp_checkpoint_resumed_dp", 2, *TP_CHECKPOINT, "--resume", str(self.out("tp_checkpoint") / "last"),
                 **TWO_EPOCHS)
        for family, (ranks, opts) in FAMILIES.items():
            for mode, mode_opts in MODES.items():
                name = f"recipe_{family}_{mode}"
                self.add(name, ranks, *RECIPE, *opts, *mode_opts, *(TWO_LEVELS if name in RECIPE_TWO_LEVELS else ()),
                         **{"data.limit_train_batches": 2})
        for name in SHIPPED:
            self.specs[2][name] = {"tool": "train.py", "argv": ["-c", f"configs/{name}.yaml", "--output",
                                                                str(self.out(name)), "--opts", f"data.root={root}",
                                                                *SHRINK]}
        # last: both ranks must return from the refused run (no rank left waiting in a collective)
        self.add("refused", 2, "dist.tensor_parallel=2", "data.demo=false", "data.synthetic=true", "model.num_classes=5",
                 expect_error=True)
        # the groups plan over 4 ranks of a model whose level 0 has gamma 2: every rank stops, naming the level
        self.add("refused_gamma", 4, "dist.tensor_parallel=4", "data.demo=false", "data.synthetic=true",
                 expect_error=True)

    def out(self, name):
        return self.base / name

    def add(self, name, ranks, *opts, expect_error=False, **extra):
        self.specs[ranks][name] = {"tool": "train.py", "argv": train_argv(self.root, self.out(name), *opts, **extra),
                                   "expect_error": expect_error}

    def job(self, ranks):
        if ranks not in self.done:
            self.done[ranks] = run_many(ranks, list(self.specs[ranks].values()), self.base / f"job_{ranks}_ranks")
        return self.done[ranks]

    def result(self, name):
        """The per-rank results of run ``name`` (its job launched if not yet); asserts that it ran on every rank
        and, unless it is expected to fail, exited 0 everywhere. Returns its output directory."""
        ranks = next(r for r, specs in self.specs.items() if name in specs)
        results, job = self.job(ranks)
        got = results[list(self.specs[ranks]).index(name)]
        assert got is not None, f"run {name} did not finish: {job}"
        if not self.specs[ranks][name].get("expect_error"):
            for r, res in enumerate(got):
                assert res["code"] == 0, f"run {name}, rank {r}: exit {res['code']}\n{res['stderr'][-3000:]}"
        return got

    def trained(self, name):
        self.result(name)
        return self.out(name)


@pytest.fixture(scope="module")
def runs(tiny_demo_root, tmp_path_factory):
    return Runs(tiny_demo_root, tmp_path_factory.mktemp("layouts"))


def losses(out):
    return [(u, loss) for u, loss, _ in updates(out, grad_norm=False)]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_equals_one_eager_process(layout, runs):
    ranks, opts, ref_opts = LAYOUTS[layout]
    ref, out = runs.trained(REFERENCES[model_opts(layout), ref_opts]), runs.trained(layout)
    if "train.graph=true" in opts:  # a graph step does not report its gradient norm
        assert len(losses(ref)) >= 2 and losses(out) == losses(ref)
    else:
        assert len(updates(ref)) == 3 and updates(out) == updates(ref)
    assert max_state_diff(ref / "last", out / "last") <= TOL
    assert f"on {ranks} rank(s)" in open(out / "log_rank0.txt").read()


def assert_trained(out, updates_expected):
    """The run made ``updates_expected`` optimizer updates at a positive lr with finite gradients that reached every
    parameter that can get one, and its replicas agree. (Whether the loss fell cannot be told from 1-2 updates
    under Mixup, dropout and RandAugment: it rises as often as it falls.)
    - the log names updates 1..N, each with a finite positive loss, a positive lr and (eager; a graph does not
      report it) a finite positive gradient norm;
    - the ``last`` checkpoint counts N updates, and AdamW N steps, with finite moments for every parameter and a
      non-zero first moment for all but those that get no gradient by construction;
    - the replicated weights agree across ranks (logged after the epoch)."""
    import math

    import numpy as np

    from oneflow_posmlp.checkpoint import read_oneflow_checkpoint

    log = open(out / "log_rank0.txt").read()
    logged = re.findall(r"update (\d+): loss (\S+) lr (\S+) grad_norm (\S+) ", log)
    assert [int(u) for u, *_ in logged] == list(range(1, updates_expected + 1)), logged
    graph = "train graph compiled" in log
    for _, loss, lr, norm in logged:
        assert math.isfinite(float(loss)) and float(loss) > 0 and float(lr) > 0, logged
        assert (graph and norm == "nan") or (math.isfinite(float(norm)) and float(norm) > 0), logged
    ckpt = read_oneflow_checkpoint(out / "last")
    state = ckpt["optimizer"]["state"]
    moments = [v for k, v in state.items() if k != "step"]
    assert ckpt["updates"] == updates_expected and state["step"] == updates_expected, (ckpt["updates"], state["step"])
    assert len(moments) == sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert all(np.isfinite(m["exp_avg"].numpy()).all() and np.isfinite(m["exp_avg_sq"].numpy()).all() for m in moments)
    # no gradient by construction: the GQPE centres and spreads of a 1x1 window (a softmax over one token)
    model_cfg = ckpt["config"]["model"]
    no_gradient = 2 * sum(d for d, w in zip(model_cfg["depths"], model_cfg["win_size"]) if w == 1) \
        if model_cfg["quadratic"] else 0
    without = sum(not np.abs(m["exp_avg"].numpy()).max() > 0 for m in moments)
    assert without <= no_gradient, f"{without} parameters never got a gradient ({no_gradient} cannot)"
    assert "replicas agree within 0\n" in log  # tensor-parallel ranks agreed


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_layout_trains_with_the_recipe_regularizers(family, mode, runs):
    assert_trained(runs.trained(f"recipe_{family}_{mode}"), 2)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_starts_on_two_ranks(name, runs):
    """The ImageNet recipe as shipped (drop path, dropout, RandAugment, Mixup/CutMix, label smoothing, EMA,
    clipping), shrunk to a tiny model on the demo images: one update on 2 data-parallel ranks."""
    out = runs.trained(name)
    assert f"model {name}:" in open(out / "log_rank0.txt").read()
    assert_trained(out, 1)


@pytest.fixture
def second_node():
    """A second "machine": a network namespace joined to this one by a veth pair (10.213.N.1 here, .2 there).
    OneFlow tells nodes apart by address, so two launchers on one address (``--master_addr 127.0.0.1``) are
    taken for one node and their first cross-node collective hangs; distinct addresses make a real 2-node job."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag = f"{os.getpid() % 200 + 20}"
    ns, host_if, node_if = f"pmlp{tag}", f"pmlp{tag}a", f"pmlp{tag}b"
    host_ip, node_ip = f"10.213.{tag}.1", f"10.213.{tag}.2"
    setup = [["ip", "netns", "add", ns], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if],
             ["ip", "link", "set", node_if, "netns", ns], ["ip", "addr", "add", f"{host_ip}/24", "dev", host_if],
             ["ip", "link", "set", host_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{node_ip}/24", "dev", node_if],
             ["ip", "netns", "exec", ns, "ip", "link", "set", node_if, "up"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for cmd in setup:
            res = run_bounded(cmd, capture_output=True, text=True)
            if res.returncode:
                pytest.skip(f"cannot create a network namespace here: {' '.join(cmd)}: {res.stderr.strip()}")
        yield ["ip", "netns", "exec", ns], host_ip
    finally:
        run_bounded(["ip", "link", "del", host_if], capture_output=True)
        run_bounded(["ip", "netns", "del", ns], capture_output=True)


def test_two_node_launch_equals_one_process(second_node, runs, tiny_demo_root, tmp_path):
    """``--nnodes 2``: one launcher per node, one process each, a 2-rank data-parallel job."""
    enter_node, master = second_node
    ref = runs.trained(REFERENCES[TWO_LEVELS, ()])
    port = str(free_port())
    cmd = train_cmd(tiny_demo_root, tmp_path, *DROP_PATH, *TWO_LEVELS)
    procs = []
    for node, prefix in ((0, []), (1, enter_node)):
        launch = [sys.executable, "-m", "oneflow.distributed.launch", "--nnodes", "2", "--node_rank", str(node),
                  "--nproc_per_node", "1", "--master_addr", master, "--master_port", port]
        procs.append(subprocess.Popen(prefix + launch + cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp_path / f"node{node}.err", "w"),
                                      env=dict(os.environ, GLOG_minloglevel="2")))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], (tmp_path / "node0.err").read_text()[-1500:] + (tmp_path / "node1.err").read_text()[-1500:]
    assert updates(tmp_path) == updates(ref) and len(updates(ref)) == 3
    assert max_state_diff(ref / "last", tmp_path / "last") <= TOL
    assert "on 2 rank(s) (cpu): data_parallel 2" in open(tmp_path / "log_rank0.txt").read()
    assert os.path.isfile(tmp_path / "log_rank1.txt")


def test_tensor_parallel_checkpoint_loads_into_other_layouts(runs, tiny_demo_root, tmp_path):
    """1 epoch with tensor parallelism, then epoch 2 resumed on 2 data-parallel ranks and on 1 rank: both equal
    an uninterrupted 2-epoch run of one process; the checkpoint also evaluates in one process."""
    ref, tp = runs.trained("tp_checkpoint_reference") / "last", runs.trained("tp_checkpoint") / "last"
    assert max_state_diff(ref, runs.trained("tp_checkpoint_resumed_dp") / "last") <= TOL, "dp"
    eval_argv = ["-c", "configs/demo.yaml", "--weights", str(tp), "--opts", f"data.root={tiny_demo_root}",
                 "data.demo=false", "data.num_workers=0", "train.batch_size=16", *TP_CHECKPOINT,
                 f"output.dir={tmp_path / 'eval'}"]
    (single, evaluated), job = run_many(1, [
        {"tool": "train.py", "argv": train_argv(tiny_demo_root, tmp_path / "single", *TP_CHECKPOINT, "--resume",
                                                str(tp), **TWO_EPOCHS)},
        {"tool": "eval.py", "argv": eval_argv}], tmp_path / "job")
    assert single and single[0]["code"] == 0, single[0]["stderr"][-3000:] if single else job
    assert max_state_diff(ref, tmp_path / "single" / "last") <= TOL, "single"
    assert evaluated and evaluated[0]["code"] == 0, evaluated[0]["stderr"][-3000:] if evaluated else job
    logged = open(tp.parent / "log_rank0.txt").read()
    top1 = json.loads(evaluated[0]["stdout"].strip().splitlines()[-1])["top1"]
    assert f"top-1 {top1:.2f}%" in logged


@pytest.mark.parametrize("name", [n for n, (_, _, ref) in TP_RECIPE.items() if ref])
def test_tensor_parallel_recipe_equals_its_reference(name, runs):
    """Drop path, Mixup/CutMix, RandAugment and EMA (and dropout, against the gather plan): the groups plan on 2 and 4
    ranks ends with the weights, AdamW moments and EMA weights of its reference, written in the same checkpoint
    files (same keys, shapes and dtypes: the official layout)."""
    ref, out = runs.trained(TP_RECIPE[name][2]), runs.trained(name)
    assert losses(out) == losses(ref) and len(losses(ref)) == 2
    a, b = read_oneflow_checkpoint(ref / "last"), read_oneflow_checkpoint(out / "last")
    for part in ("model", "ema"):
        assert {k: (tuple(v.shape), v.dtype) for k, v in a[part].items()} == \
            {k: (tuple(v.shape), v.dtype) for k, v in b[part].items()}, part
        assert max(float(np.abs(v.numpy() - b[part][k].numpy()).max()) for k, v in a[part].items()) <= TOL, part
    assert max_state_diff(ref / "last", out / "last") <= TOL
    assert "replicas agree within 0\n" in open(out / "log_rank0.txt").read()


def test_layout_that_does_not_fit_is_refused_on_every_rank(runs):
    """num_classes 5 does not split over 2 tensor-parallel ranks: both ranks exit with the error, no hang (the
    job's later runs and its end are reached: the refused run is the 2-rank job's last)."""
    refused = runs.result("refused")
    for res in refused:
        assert res["code"] == 2 and res["stderr"].count("dist.tensor_parallel=2 does not divide num_classes 5") == 1, \
            res["stderr"][-2000:]
    assert runs.job(2)[1].startswith("job of") and " exited 0:" in runs.job(2)[1], runs.job(2)[1]
    needle = ("dist.tensor_parallel=4 with dist.tensor_parallel_mode=groups: in level 0 (levels.0.encoder.0.gate_unit), "
              "gamma 2 (the gating unit's channel groups) does not split over 4 ranks")
    for res in runs.result("refused_gamma"):
        assert res["code"] == 2 and res["stderr"].count(needle) == 1, res["stderr"][-2000:]
    assert " exited 0:" in runs.job(4)[1], runs.job(4)[1]


def test_split_checks(tiny_model_cfg):
    model = build_model(tiny_model_cfg)  # hidden widths 32/64/128/128, 5 classes
    check_tensor_parallel(model, 1)
    for mode in ("groups", "gather"):
        with pytest.raises(LayoutError, match="does not divide num_classes 5"):
            check_tensor_parallel(model, 2, mode)
    with pytest.raises(LayoutError, match="does not divide the block's hidden width"):
        check_tensor_parallel(build_model(dict(tiny_model_cfg, num_classes=6)), 3, "gather")
    assert level_stages(4, 2) == [0, 0, 1, 1] and level_stages(4, 4) == [0, 1, 2, 3]
    with pytest.raises(LayoutError, match="at most 4 pipeline stages"):
        level_stages(4, 5)
    stages = module_stages(model, 2)
    assert stages["patch_embed"] == 0 and stages["levels.3"] == 1 and stages["head"] == 1
