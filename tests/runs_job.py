"""Run by tests/launch.py (``run_many``) on 1, 2 or 4 ranks: several ``tools/train.py`` / ``tools/eval.py`` command
lines one after another in the same processes, so a layout's scenarios pay for one launch and one OneFlow
start-up instead of one each. Each command line goes through the tool's own ``main(argv)`` (the CLI path:
``cli.run``, its ``error:`` lines and exit codes); every run's exit code, stdout and stderr are written to
``OUT/rank{r}.json`` after each run.

    python -m oneflow.distributed.launch --nproc_per_node 2 tests/runs_job.py RUNS.json OUT

``RUNS.json``: ``[{"tool": "train.py", "argv": [...]}, ...]``. A run that raises records its traceback (exit code
1) and the next run starts; a run that leaves the other ranks waiting in a collective hangs the job, which the
caller's timeout ends.
"""
import contextlib
import io
import json
import os
import runpy
import sys
import traceback

import oneflow_posmlp  # noqa: F401  (before oneflow)
import oneflow as flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
runs_file, out = sys.argv[1], sys.argv[2]
with open(runs_file) as f:
    runs = json.load(f)
rank = flow.env.get_rank()
tools = {}
results = []
for spec in runs:
    tool = spec["tool"]
    if tool not in tools:  # as imported by runpy: the tools skip their re-exec guard (tools/_python.py)
        tools[tool] = runpy.run_path(os.path.join(ROOT, "tools", tool), run_name=f"posmlp_tool_{tool[:-3]}")["main"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = tools[tool](spec["argv"])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # a bug: keep its traceback for the test's message
            traceback.print_exc()
            code = 1
    results.append({"argv": spec["argv"], "code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    if code != 0 and not spec.get("expect_error"):
        print(f"run {len(results)} of {len(runs)} on rank {rank} exited {code}:\n{stderr.getvalue()[-3000:]}",
              file=sys.stderr)
