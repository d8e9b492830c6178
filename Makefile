# lightning-asr: `make setup` once (idempotent), then `make test` or `make bench-forgetting`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TOKENIZER := .cache/whisper-tokenizer/tokenizer.json
PROFILE ?= embedded
SEEDS ?=

.PHONY: setup test test-all bench-forgetting mlflow-ui clean

setup: $(INSTALLED) $(TOKENIZER)

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,synth]'
	touch $(INSTALLED)

$(TOKENIZER): $(INSTALLED)
	$(BIN)/python -m lightning_asr.tokenizer

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf runs data_manifests/smoke .pytest_cache
