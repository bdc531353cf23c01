PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-slow lint format bench bench-full bench-gpu demo image image-cpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/verydeep serve

test: $(STAMP)
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

# On a GPU host: the suite on the CUDA provider with float32, then float16 exports.
bench-gpu: $(STAMP)
	$(BIN)/python -m bench.run --quick --device cuda
	$(BIN)/python -m bench.run --quick --device cuda --fp16

demo: $(STAMP)
	scripts/make_demo_store.sh

image:
	docker build -t verydeep:0.1.0 .

image-cpu:
	docker build --build-arg VERYDEEP_EXTRAS= -t verydeep:0.1.0-cpu .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
