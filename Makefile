# sift: `make demo` runs the main job on the embedded default corpus; `make test` runs the tests.
# Both set up what they need first, idempotently: system tools (ffmpeg, Chromium) from the system
# packages when absent, and a .venv with the project installed (re-installed when pyproject changes).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
STATE := .sift
DEMO := $(STATE)/demo
export RAY_USAGE_STATS_ENABLED := 0
export MLFLOW_DISABLE_TELEMETRY := true
export YOLO_OFFLINE := 1
export ORT_DISABLE_TELEMETRY := 1
export RAY_DATA_USE_DATASOURCE_V2 := 0
export PYTHONUNBUFFERED := 1

.PHONY: setup system venv demo test test-fast bench clean

setup: system venv

# ffmpeg (video), Chromium (scraper) and rsync (the cluster launcher's file sync, tested) come from
# the system packages when missing.
system:
	@missing=""; command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	 command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing="$$missing chromium"; \
	 command -v rsync >/dev/null || missing="$$missing rsync"; \
	 if [ -n "$$missing" ]; then \
	   if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	     echo "installing$$missing (apt-get)"; \
	     apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	   else echo "warning: please install$$missing (needed for video and scraping)"; fi; \
	 fi

venv: $(STAMP)

# uv installs the same set as pip, several times faster; it is handed pip's index settings
# (.ci/uv_env.py), and pip itself installs when uv cannot.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install -q uv
	@# pip, setuptools and wheel through uv too: MLflow records their versions as a logged model's build
	@# dependencies, and an environment rebuilt from uv's cache alone (the portable-model test) needs them there
	eval "$$($(PY) .ci/uv_env.py)" && $(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]' \
	  pip setuptools wheel $(foreach p,pip setuptools wheel,--upgrade-package $(p) --reinstall-package $(p)) \
	  || $(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

demo: setup
	$(VENV)/bin/sift make-corpus $(DEMO)/corpus --images 480 --videos 6 --seed 0 --workers 2
	$(VENV)/bin/sift preprocess --input $(DEMO)/corpus --output $(DEMO)/data
	$(VENV)/bin/sift train --data $(DEMO)/data --config train/configs/small.yaml
	$(VENV)/bin/sift promote --latest
	$(VENV)/bin/sift runs --last 5
	$(PY) -m serve.demo --data $(DEMO)/data
	@echo "MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$$PWD/$(STATE)/mlflow.db -w 1"

# One process by default: a clean clone's `make test` took 21:45-23:15 here (2 cores; 840 passed;
# ~65 s more where ffmpeg and Chromium are still to be installed). Two pytest-xdist workers were no faster on 2 cores (each test ran ~1.6x slower beside the
# other, and timing-bound cluster and browser tests failed). On a machine with more cores
# TEST_WORKERS=N spreads the groups tests/conftest.py forms over N workers.
TEST_WORKERS ?= 0

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/preprocess.py

clean:
	rm -rf $(STATE) .pytest_cache
