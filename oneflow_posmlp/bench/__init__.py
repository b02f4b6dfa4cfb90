"""The benchmark (``tools/benchmark.py``, ``oneflow_posmlp.bench.cli``): throughput of the train and eval steps,
eager and ``nn.Graph``, compile time, memory, parameters and FLOPs on synthetic data, and the eager forward's
time by module kind.

- :mod:`.runner`: the modes, run through the trainer's own step objects (``engine/step.py``) and evaluation
  (``engine/evaluate.py``) built from a config, and their timing;
- :mod:`.profile`: the eager forward timed by module kind with forward hooks;
- :mod:`.measure`: synchronisation, memory, threads and the environment the figures depend on;
- :mod:`.report`: the table and the JSON file;
- :mod:`.cli`: the command line (``main(argv)``, ``--ranks N`` launches the ranks);
- :mod:`.token_mixing`: the token-mixing micro-benchmark (``tools/benchmark_token_mixing.py``).

The FLOP counter lives with the models (``oneflow_posmlp.models.flops``). docs/benchmark.md has the figures.
"""
