"""bench/token_mixing.py (tools/benchmark_token_mixing.py): the einsum formulation equals group_mix, and the
micro-benchmark runs."""
import numpy as np
import oneflow as flow

from oneflow_posmlp.bench.token_mixing import einsum_mix, main
from oneflow_posmlp.models import group_mix


def test_einsum_equals_group_mix():
    x, token_map = flow.randn(2, 3, 4, 6), flow.randn(1, 2, 4, 4)
    np.testing.assert_allclose(einsum_mix(token_map, x, 2).numpy(), group_mix(token_map, x).numpy(), atol=1e-5)


def test_main_prints_both_timings(capsys):
    assert main(["--batch", "1", "--windows", "2", "--win", "2", "--channels", "4", "--gamma", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "group_mix (bmm)" in out and "einsum" in out
