# Quick start:  make demo   (train the embedded demo)   |   make test   (run the test suite)
# Both create .venv (Python 3.10 + pinned OneFlow stack) on first use via scripts/ensure_venv.sh.
PY := .venv/bin/python
# make test: the single-process tests on TEST_WORKERS pytest-xdist workers (OneFlow computes on one core per
# process; --dist loadscope keeps a module on one worker, so its module-scoped fixtures are built once), then
# the distributed tests (each launches 1-4 ranks on ports of its own): on the same workers, a module per worker, so
# test_parallel_layouts.py's jobs run beside the smaller modules' launches.
# A crashed worker (a segfault or abort inside a test, or tests/conftest.py's watchdog ending a test stuck in native
# code) fails that test and ends the tier at once (--max-worker-restart 0): pytest-xdist 3.8.0's loadscope can hang
# after replacing a crashed worker (it re-queues the dead worker's finished modules as empty work units).
# Every test has a deadline (setup.cfg: timeout); test-fast leaves out the tests marked slow (> ~20 s each).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadscope --max-worker-restart 0

.PHONY: venv demo test test-fast clean-venv
venv:
	@bash scripts/ensure_venv.sh

demo: venv
	$(PY) tools/train.py -c configs/demo.yaml

test: venv
	$(PY) -m pytest -q $(XDIST) -m "not distributed"
	$(PY) -m pytest -q $(XDIST) -m distributed

test-fast: venv
	$(PY) -m pytest -q $(XDIST) -m "not slow and not distributed"

clean-venv:
	rm -rf .venv
