"""parallel/traffic.py: the bytes a rank sends for each SBP conversion of a compiled graph's plan."""
import pytest

from oneflow_posmlp.parallel.traffic import bytes_per_rank

X = 1200.0  # logical bytes


@pytest.mark.parametrize("have,want,n,sent", [
    (("S0",), ("B",), 2, X / 2),              # all-gather: the other half
    (("S3",), ("B",), 4, 3 * X / 4),
    (("P",), ("B",), 2, X),                   # ring all-reduce: 2 (n-1)/n X
    (("P",), ("B",), 4, 1.5 * X),
    (("P",), ("S0",), 4, 3 * X / 4),          # reduce-scatter
    (("S0",), ("S1",), 2, X / 4),             # all-to-all: (n-1)/n of this rank's X/n
    (("B",), ("S0",), 4, 0.0),                # a local slice
    (("S0",), ("P",), 2, 0.0),                # a rank keeps its part, zeros elsewhere
])
def test_one_axis(have, want, n, sent):
    assert bytes_per_rank(have, want, X, (n,)) == pytest.approx(sent)


def test_two_axes_count_each_changed_axis_on_its_share():
    # (data, tensor) = 2 x 2: the batch split on axis 0 halves what the tensor axis all-reduces
    assert bytes_per_rank(("S0", "P"), ("S0", "B"), X, (2, 2)) == pytest.approx(X / 2)
    assert bytes_per_rank(("S0", "S3"), ("B", "B"), X, (2, 2)) == pytest.approx(X / 4 + X / 4)
