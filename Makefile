PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# One stamp per install level: `make serve` needs the serving dependencies only (no torch), every
# other target the train and dev extras too. Either can come first on a fresh clone; both are
# redone when pyproject.toml changes.
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed-all

.PHONY: install serve browser test test-slow lint format bench bench-full bench-gpu demo image image-cpu image-test clean

$(BIN)/python:
	@echo "==> creating $(VENV) with $(PYTHON), then upgrading pip"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing the serving dependencies (no torch: 0.5 GB, under a minute): pip install -e ."
	$(BIN)/pip install -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing with the train and dev extras (torch, test tools: 6 GB, minutes): pip install -e '.[train,dev]'"
	$(BIN)/pip install -e '.[train,dev]'
	touch $@ $(SERVE_STAMP)

install: $(STAMP)

serve: $(SERVE_STAMP)
	@echo "==> serving $${VERYDEEP_MODEL_STORE:-./model_store} (Ctrl+C stops it)"
	$(BIN)/verydeep serve

# The browser test of the web page (tests/browser) drives Debian's chromium; Playwright's own
# browser download is not used. Installed when missing and root, otherwise the test is skipped.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then \
		echo "==> $(CHROMIUM) is there for tests/browser"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "==> installing Debian's chromium for tests/browser (a minute): apt-get install -y chromium"; \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
			|| echo "==> chromium could not be installed: tests/browser will be skipped"; \
	else \
		echo "==> no $(CHROMIUM): tests/browser will be skipped; install it with: sudo apt-get install -y chromium"; \
	fi

test: $(STAMP) browser
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.run --quick

bench-full: $(STAMP)
	$(BIN)/python -m bench.run --full

# On a GPU host: the suite on the CUDA provider with float32, then float16 exports, then the
# preprocessing graph against Pillow and torchvision (docs/gpu.md, "Preprocessing on the GPU").
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.run --quick --device cuda
	$(BIN)/python -m bench.run --quick --device cuda --fp16
	INSTALL=0 PYTHON=$(BIN)/python scripts/gpu_suite.sh 3600

demo: $(STAMP)
	scripts/make_demo_store.sh

image:
	docker build -t verydeep:0.1.0 .

image-cpu:
	docker build --build-arg VERYDEEP_EXTRAS= -t verydeep:0.1.0-cpu .

# The container tests on purpose (tests/deploy/test_container_*.py, marker `container`; `make test`
# runs them too where `docker info` answers): build the CPU image, run the Compose stacks, fail
# replicas over behind nginx, then remove what they built (docs/deployment.md, "Container
# tests"). Where no engine answers, CONTAINER_ENGINE starts one, with its stand-in base images.
CONTAINER_ENGINE ?= ../shared/tools/container-engine.sh
image-test: $(STAMP)
	@if ! docker info >/dev/null 2>&1; then \
	  if [ -x "$(CONTAINER_ENGINE)" ]; then \
	    echo "==> no container engine answers: starting one with $(CONTAINER_ENGINE) up"; \
	    $(CONTAINER_ENGINE) up; \
	  else \
	    echo "no container engine answers (docker info), and no $(CONTAINER_ENGINE) to start one" >&2; \
	    exit 1; \
	  fi; \
	fi
	@if [ -x "$(CONTAINER_ENGINE)" ] && $(CONTAINER_ENGINE) status >/dev/null 2>&1; then \
	  echo "==> the stand-in base images (a few minutes the first time)"; \
	  $(CONTAINER_ENGINE) base && $(CONTAINER_ENGINE) nginx; \
	fi
	$(BIN)/pytest -m container -rs tests/deploy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
