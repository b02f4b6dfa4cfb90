# Quick start:  make demo   (train the embedded demo)   |   make test   (run the test suite)
# Both create .venv (Python 3.10 + pinned OneFlow stack) on first use via scripts/ensure_venv.sh.
PY := .venv/bin/python

.PHONY: venv demo test test-fast clean-venv
venv:
	@bash scripts/ensure_venv.sh

demo: venv
	$(PY) tools/train.py -c configs/demo.yaml

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not distributed"

clean-venv:
	rm -rf .venv
