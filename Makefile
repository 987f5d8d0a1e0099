# `make test` and `make demo` set up .venv on first use, then reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# the classification environment (see its recipe below)
CLS_VENV ?= .venv-cls
CLS_PY := $(CLS_VENV)/bin/python
CLS_PIP := $(CLS_PY) -m pip
CLS_STAMP := $(CLS_VENV)/.installed
CLS_REQUIREMENTS := $(CLS_VENV)/requirements.txt
CLS_TESTS := tests/test_models/test_classification.py tests/test_tools/test_classification_tools.py

.PHONY: setup setup-cls test test-fast test-cls test-matrix demo clean

setup: $(STAMP)
setup-cls: $(CLS_STAMP)

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

# The classification environment: the registry's torch and torchvision
# (CUDA builds that run on the CPU too), mmcv 2.1.0 built from its source
# without its ops (mmpretrain uses none, and torch 2.14's headers need C++20
# where mmcv's ops ask for C++17; without ops the build names itself
# mmcv-lite, hence the downloaded file; no wheel cache: a cached wheel has
# the pinned torch's ops), mmpretrain, the rest of requirements.txt. The package is
# installed with build isolation, so its Haar kernels are not built for
# this torch and the pinned environment's in-place build stays; here the
# pure-PyTorch transforms run after one warning (same results).
$(CLS_STAMP): requirements.txt pyproject.toml
	test -x $(CLS_PY) || $(PYTHON) -m venv $(CLS_VENV)
	grep -v -E '^(torch|mmcv)==' requirements.txt > $(CLS_REQUIREMENTS)
	printf 'torch==2.14.1\ntorchvision==0.29.1\nmmpretrain==1.2.0\n' >> $(CLS_REQUIREMENTS)
	$(CLS_PIP) install -c $(CLS_REQUIREMENTS) torch torchvision numpy setuptools wheel ninja psutil
	$(CLS_PIP) download --no-deps --no-binary :all: -d $(CLS_VENV)/src mmcv==2.1.0
	MMCV_WITH_OPS=0 $(CLS_PIP) install --no-build-isolation --no-cache-dir -c $(CLS_REQUIREMENTS) $(CLS_VENV)/src/mmcv-2.1.0.tar.gz
	$(CLS_PIP) install -r $(CLS_REQUIREMENTS)
	$(CLS_PIP) install --no-deps -e .
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

# The suite on the pinned stack, then the classification tests in their
# own environment (mmpretrain needs torchvision, which the pinned CPU torch
# lacks).
test: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(TEST_OPTS) $(PYTEST_ARGS)
	$(MAKE) test-cls

test-cls: $(CLS_STAMP)
	$(TEST_ENV) $(CLS_PY) -m pytest $(TEST_OPTS) $(CLS_TESTS) $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(CLS_VENV) work_dirs
