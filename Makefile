# Two commands do everything from a fresh clone: `make demo` and `make test`.
# Everything installs into .venv from the package registries; nothing by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when the dependency declarations or the compiled kernel change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile setup.py edge/_kernel.c | cksum | cut -d' ' -f1)
OUT    ?= demo-run

.PHONY: help venv demo reproduce test test-fast bench soak arm64-check tflite-env lint browser clean

help:
	@echo "make demo         full pipeline on the virtual cortex -> $(OUT)/report.json"
	@echo "make reproduce    the long run behind docs/results.md (about 50 min on 2 cores)"
	@echo "make test         install (if needed) and run the test suite"
	@echo "make bench        benchmarks under bench/ (tables + JSON in bench/results/)"
	@echo "make soak         1-hour fault-injection soak of the edge runtime"
	@echo "make arm64-check  the edge path in an emulated arm64 Python (qemu-user)"
	@echo "make tflite-env   .venv-tflite: tflite-runtime 2.14 with numpy<2 (bench/tests use it)"
	@echo "make lint         ruff and the import-layer contracts (part of make test)"
	@echo "make browser      Debian's chromium + chromium-driver for the monitor's browser test (part of make test)"

$(STAMP): pyproject.toml Makefile setup.py edge/_kernel.c
	# the edge's compiled kernel (edge/_kernel.c) needs a C compiler: Debian's gcc if none
	@command -v cc >/dev/null || command -v gcc >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends gcc libc6-dev; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[edge,train,quantize,io,dev]'
	# onnx2tf 1.29.24 (newest for Python 3.11) hard-pins old tensorflow/numpy/onnx, and
	# tf-keras's deps pull the full tensorflow wheel: both go in without deps (docs/toolchain.md).
	$(BIN)/python -m pip install -q --no-deps onnx2tf==1.29.24 tf-keras==2.21.0
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

demo: venv
	$(BIN)/phosphene demo --out $(OUT) --overwrite

# Not part of demo or test: 2 h of resting data, 6,000 evaluation trials per task, a
# 6,000-step teacher; rewrites the reproduction section of docs/results.md.
reproduce: venv
	$(BIN)/phosphene demo --reproduce --out reproduce-run --overwrite --results-md docs/results.md

test: venv lint browser
	$(BIN)/python -m pytest -q -ra

bench: venv
	$(BIN)/python bench/run_all.py

soak: venv
	$(BIN)/python -m pytest -q -ra -m soak --timeout 5400

arm64-check: venv
	bash arm64/check.sh

# the design card's interpreter (tflite-runtime 2.14 needs numpy<2) in its own environment
tflite-env:
	bash scripts/make_tflite_env.sh

# ruff (rules in pyproject.toml) and the import-linter layer contracts (docs/architecture.md)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint_imports.py

# the monitor's page is tested in a real headless browser (tests/monitor): Debian's chromium
# and its driver, installed once (root, or through sudo); a no-op when they are there
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation; }

clean:
	rm -rf $(VENV) .venv-* build *.egg-info $(OUT) reproduce-run bench/results .pytest_cache edge/_kernel*.so
