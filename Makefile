# `make workbook` regenerates every study; `make test` runs the checks. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SAMPLE_IMAGES := naclip/resources/samples/voc/JPEGImages/sample_0000.jpg naclip/resources/samples/ade/images/validation/ADE_val_00000001.jpg
ARCH := $(shell uname -m)
# torch and torchvision must come as a matching pair.
ifeq ($(ARCH),aarch64)
TORCH ?= torch==2.9.1 torchvision==0.24.1
else
TORCH ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: setup workbook smoke test test-browser lint bench

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH)
	$(PY) -m pip install -e ".[workbook,dev]"
	touch $@

workbook: setup
	$(VENV)/bin/naclip workbook run

smoke: setup
	$(VENV)/bin/naclip workbook run --profile smoke

lint: setup
	$(PY) -m ruff check naclip tests benchmarks
	$(PY) -m ruff format --check naclip tests benchmarks

test: lint
	$(PY) -m pytest -q

# The explorer notebook in JupyterLab and headless Chromium (Debian: apt-get install chromium); needs playwright.
test-browser: setup
	$(PY) -m pip install -q playwright
	NACLIP_BROWSER_TESTS=1 $(PY) -m pytest -q -rs tests/browser

bench: setup
	$(PY) -m benchmarks.report --readme README.md
ifdef NACLIP_CHECKOUT
	$(PY) -m benchmarks.reference_check --naclip $(NACLIP_CHECKOUT) --methods naclip --benchmarks voc21 coco_object \
		--fast --speed --images $(SAMPLE_IMAGES)
else
	@echo "End to end against the authors' pipeline: make bench NACLIP_CHECKOUT=/path/to/NACLIP (git clone of sinahmr/NACLIP)"
endif
