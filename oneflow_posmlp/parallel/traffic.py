"""What a compiled ``nn.Graph`` moves between ranks: the SBP conversions (boxing) of its plan, per block.

After compilation a graph's job (``graph._compiled_job_proto``) records the SBP every op reads and writes each
tensor with. Wherever a consumer reads a tensor with another SBP than its producer wrote it, OneFlow inserted
boxing there: that edge is a transfer. :func:`graph_boxing` lists those edges with the tensor's logical size;
:func:`bytes_per_rank` turns an edge into the bytes each rank of the axis sends with the usual collective
algorithms (for ``n`` ranks and a logical tensor of ``X`` bytes):

=====================  ===================  ==========================
conversion             collective           bytes sent per rank
=====================  ===================  ==========================
``split -> broadcast``   all-gather           ``(n-1)/n X``
``partial -> broadcast`` all-reduce (ring)    ``2 (n-1)/n X``
``partial -> split``     reduce-scatter       ``(n-1)/n X``
``split(i) -> split(j)`` all-to-all           ``(n-1)/n^2 X``
``broadcast -> split``,  local slice / zeros  0
``* -> partial``
=====================  ===================  ==========================

On a 2-D placement each axis whose SBP changes counts on its own, with ``X`` divided by the ranks of the other
axes that split it. The figures are what the plan asks for, not a wire measurement (OneFlow 0.9.0 on CPU may
move more, e.g. through rank 0); docs/parallel.md uses them to compare the tensor-parallel modes.
"""
import re
from collections import defaultdict

_BLOCK = re.compile(r"model\.(levels\.\d+\.encoder\.\d+)[.-]")


def _kind(sbp):
    """``'B'``, ``'P'`` or ``'S<axis>'`` of one ``SbpParallel`` proto."""
    which = sbp.WhichOneof("parallel_type")
    if which == "split_parallel":
        return f"S{sbp.split_parallel.axis}"
    return {"broadcast_parallel": "B", "partial_sum_parallel": "P"}[which]


def graph_boxing(graph):
    """``[(op name, tensor name, producer SBP, consumer SBP, logical bytes, hierarchy)]``: every place where the
    compiled ``graph`` reads a tensor with another SBP than it was produced with. SBPs are tuples of ``'B'``,
    ``'P'``, ``'S<axis>'`` (one per placement axis); ``hierarchy`` the placement's shape."""
    job = graph._compiled_job_proto
    if job is None:
        raise ValueError("the graph is not compiled yet: call it once before graph_boxing")
    signatures = job.job_parallel_view_conf.op_name2nd_sbp_signature_conf
    hierarchies = {}
    for group in job.placement.placement_group:
        shape = tuple(group.parallel_conf.hierarchy.dim) or (len(group.parallel_conf.device_name),)
        for name in group.op_set.op_name:
            hierarchies[name] = shape
    produced = {}
    for op in job.net.op:
        sig = signatures.get(op.name)
        if sig is None:
            continue
        if op.WhichOneof("op_type") == "user_conf":
            for key, lbns in op.user_conf.output.items():
                for i, lbn in enumerate(lbns.s):
                    produced[lbn] = tuple(_kind(s) for s in sig.bn_in_op2nd_sbp[f"{key}_{i}"].sbp_parallel)
        elif "out" in sig.bn_in_op2nd_sbp:  # variables, system ops: one output "out"
            produced[f"{op.name}/out"] = tuple(_kind(s) for s in sig.bn_in_op2nd_sbp["out"].sbp_parallel)
    edges = []
    for op in job.net.op:
        sig = signatures.get(op.name)
        if sig is None or op.WhichOneof("op_type") != "user_conf":
            continue
        for key, lbns in op.user_conf.input.items():
            for i, lbn in enumerate(lbns.s):
                want = tuple(_kind(s) for s in sig.bn_in_op2nd_sbp[f"{key}_{i}"].sbp_parallel)
                have = produced.get(lbn)
                if have is None or have == want:
                    continue
                desc = job.helper.lbn2logical_blob_desc[lbn]
                elements = 1
                for d in desc.shape.dim:
                    elements *= d
                edges.append((op.name, lbn, have, want, elements * _dtype_bytes(desc.data_type),
                              hierarchies.get(op.name, (1,))))
    return edges


def _dtype_bytes(data_type):
    # oneflow DataType enum: kFloat 2, kDouble 3, kInt8 4, kInt32 5, kInt64 6, kUInt8 7, kFloat16 9, kBFloat16 11
    return {2: 4, 3: 8, 4: 1, 5: 4, 6: 8, 7: 1, 9: 2, 11: 2}.get(int(data_type), 4)


def bytes_per_rank(have, want, nbytes, hierarchy):
    """Bytes each rank sends for converting a tensor of ``nbytes`` logical bytes from SBP ``have`` to ``want``
    (tuples as :func:`graph_boxing` gives) on a placement of shape ``hierarchy`` (see the module docstring)."""
    total = 0.0
    for axis, (a, b) in enumerate(zip(have, want)):
        if a == b:
            continue
        n = hierarchy[axis]
        x = nbytes
        for other, s in enumerate(have):
            if other != axis and s.startswith("S"):
                x /= hierarchy[other]
        if b == "B":
            total += {"P": 2 * (n - 1) / n * x}.get(a, (n - 1) / n * x)
        elif b.startswith("S"):
            total += {"P": (n - 1) / n * x, "B": 0.0}.get(a, (n - 1) / n / n * x)
        # to partial: free (a rank keeps its value or zeros)
    return total


def traffic_by_block(graph):
    """``{block name (levels.i.encoder.j) or 'other': bytes sent per rank}`` of one call of the compiled
    ``graph`` (forward, backward and optimizer update of a train graph)."""
    out = defaultdict(float)
    for op, lbn, have, want, nbytes, hierarchy in graph_boxing(graph):
        m = _BLOCK.search(op + "-") or _BLOCK.search(lbn + "-")
        out[m.group(1) if m else "other"] += bytes_per_rank(have, want, nbytes, hierarchy)
    return dict(out)
