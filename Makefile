# Two entry points for a fresh machine:  `make demo`  and  `make test`.
# Both create ./.venv (Python >= 3.10) on first use and install hsicluster into it.
# Torch: an existing torch in the venv is kept (install your own CUDA build first to choose it).
# Otherwise the pinned TORCH_SPEC is installed from PyPI, or from TORCH_INDEX, a PyTorch wheel index
# (e.g. the CPU-only one, if your pip would otherwise fetch a CUDA build on a machine without a GPU).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
OUT ?= out
SAMPLE := hsi_cluster/sample_data/salinas_a/SalinasA_corrected.hdr
SAMPLE_GT := hsi_cluster/sample_data/salinas_a/SalinasA_gt.mat
# `make demo` trains once and then reuses $(OUT)/salinas_a.ckpt; RETRAIN=1 trains it again.
RETRAIN ?=
DEMO_MODEL := $(OUT)/salinas_a.ckpt
DEMO_TRAIN := $(or $(filter-out 0 no false,$(RETRAIN)),$(if $(wildcard $(DEMO_MODEL)),,yes))

.PHONY: setup demo test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "hsicluster needs Python >= 3.10"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c 'import torch' 2>/dev/null; then echo "keeping installed torch"; \
	else $(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); fi
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	mkdir -p $(OUT)
	$(VENV)/bin/hsicluster ingest $(SAMPLE) -o $(OUT)/salinas_a.zarr --overwrite
	$(VENV)/bin/hsicluster info $(OUT)/salinas_a.zarr
	$(if $(DEMO_TRAIN),$(VENV)/bin/hsicluster train $(OUT)/salinas_a.zarr -k 6 -o $(DEMO_MODEL) --overwrite,\
		@echo "reusing the trained model $(DEMO_MODEL) (make demo RETRAIN=1 trains it again)")
	$(VENV)/bin/hsicluster predict $(OUT)/salinas_a.zarr -m $(OUT)/salinas_a.ckpt -o $(OUT)/salinas_a_labels.tif \
		--quicklook $(OUT)/salinas_a_labels.png --overwrite
	$(VENV)/bin/hsicluster evaluate $(OUT)/salinas_a_labels.tif $(SAMPLE_GT)

test: setup lint
	$(PY) -m pytest -q

# style checked, not remembered: ruff (pyflakes, imports, bugbear, pyupgrade, complexity ≤ 15) and mypy
lint: setup
	$(PY) -m ruff check hsi_cluster tests benchmarks
	$(PY) -m mypy hsi_cluster

test-all: setup
	$(PY) -m pytest -q -m ''

bench: setup
	$(PY) benchmarks/ingest_throughput.py

clean:
	rm -rf $(OUT) .pytest_cache
