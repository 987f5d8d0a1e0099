# `make test` and `make demo` set up .venv on first use, then reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-matrix demo clean

setup: $(STAMP)

# torch first (pinned: an unpinned torch pulls several GB of CUDA wheels),
# then mmcv 2.1.0 built from source with its compiled ops (about 5-20 min on
# 2 cores the first time; pip caches the wheel), then the rest, with the
# deploy extra's onnx, onnxscript and onnxruntime for the deployment tests.
$(STAMP): requirements.txt pyproject.toml setup.py wavevit_mm/ops/csrc/haar.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements.txt torch==2.13.0 numpy setuptools opencv-python wheel ninja psutil
	MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation -c requirements.txt mmcv==2.1.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

# One torch thread unless OMP_NUM_THREADS says otherwise: OpenMP threads
# that share the cores with other work (the tools the tests run, anything
# else on a small machine) spin and slow the suite down several times.
TEST_ENV := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}
# The test files run side by side on TEST_WORKERS processes (pytest-xdist),
# each file whole on one of them, so that a module's shared exports and
# training runs are made once.
TEST_WORKERS ?= 2
TEST_OPTS := -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(TEST_OPTS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(TEST_OPTS) -m "not slow" $(PYTEST_ARGS)

# The suite on another torch, in its own environment (.venv-torch$(TORCH):
# that torch from the package index, mmcv 2.1.0 compiled against it, the
# rest of requirements.txt) with the package's Haar kernels built for it;
# prints one row: torch, Python, mmcv, tests passed/failed/skipped.
#   make test-matrix TORCH=2.1.2
TORCH ?= 2.13.0

test-matrix:
	$(TEST_ENV) $(PYTHON) tools/test_matrix.py --torch $(TORCH) \
		--workers $(TEST_WORKERS) -- $(PYTEST_ARGS)

demo: $(STAMP)
	PYTHON=$(abspath $(PY)) bash projects/toy_shapes/demo.sh

clean:
	rm -rf $(VENV) work_dirs
