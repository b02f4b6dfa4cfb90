# Quick start:  make demo   (train the embedded demo)   |   make test   (run the test suite)
# Both create .venv (Python 3.10 + pinned OneFlow stack) on first use via scripts/ensure_venv.sh.
PY := .venv/bin/python
# make test: the single-process tests on TEST_WORKERS processes (pytest-xdist; OneFlow computes on one core per
# process), then the distributed ones (each launches 1-4 ranks) one at a time
TEST_WORKERS ?= 2

.PHONY: venv demo test test-fast clean-venv
venv:
	@bash scripts/ensure_venv.sh

demo: venv
	$(PY) tools/train.py -c configs/demo.yaml

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not distributed"
	$(PY) -m pytest -q -m distributed

test-fast: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow and not distributed"

clean-venv:
	rm -rf .venv
