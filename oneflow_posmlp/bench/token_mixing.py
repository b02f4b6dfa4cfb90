"""Micro-benchmark of the group-wise token mixing: batched matmul (the model's ``group_mix``) vs ``flow.einsum``
(the official formulation). Forward+backward milliseconds, median of ``--repeat`` runs
(``tools/benchmark_token_mixing.py``).

    python tools/benchmark_token_mixing.py [--batch 8 --windows 16 --win 14 --channels 192 --gamma 8]
"""
import argparse
import statistics
import time


def einsum_mix(token_map, x, gamma):
    """The official formulation: ``token_map (Wm, S, N, N)``, ``x (B, W, N, C)`` -> ``(B, W, N, C)``."""
    import oneflow as flow

    B, W, N, C = x.shape
    return flow.einsum("wsmn,bwnvs->bwmvs", token_map, x.reshape(B, W, N, C // gamma, gamma)).reshape(B, W, N, C)


def time_fwd_bwd(fn, token_map, x, repeat):
    """Median milliseconds of ``fn(token_map, x).sum().backward()`` over ``repeat`` runs after one warm-up."""
    times = []
    for _ in range(repeat + 1):  # the first run warms up
        start = time.perf_counter()
        fn(token_map, x).sum().backward()
        token_map.grad.numpy()  # wait for the asynchronous kernels
        times.append(time.perf_counter() - start)
        token_map.grad = x.grad = None
    return statistics.median(times[1:]) * 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--win", type=int, default=14)
    p.add_argument("--channels", type=int, default=192)
    p.add_argument("--gamma", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    import oneflow as flow

    from ..models import group_mix

    N = a.win * a.win
    x = flow.randn(a.batch, a.windows, N, a.channels, requires_grad=True)
    token_map = flow.randn(1, a.gamma, N, N, requires_grad=True)
    bmm = time_fwd_bwd(group_mix, token_map, x, a.repeat)
    ein = time_fwd_bwd(lambda t, v: einsum_mix(t, v, a.gamma), token_map, x, a.repeat)
    print(f"x {tuple(x.shape)}, map {tuple(token_map.shape)}: group_mix (bmm) {bmm:.1f} ms, einsum {ein:.1f} ms "
          f"(forward+backward, median of {a.repeat})")
    return 0
