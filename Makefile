# Kaggle Digit Recognizer, end to end. `make help` lists every target.
#
# Stages are file targets: each reruns when its inputs, its parameters or the package source
# changed, and the stage itself then reuses its joblib cache when the result is already known.
# Parameters pass as variables, e.g. `make submit MODEL=mlp` or `make train EPOCHS=20`.

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DIGITS := $(PY) -m pipeline
INSTALLED := $(VENV)/.installed

# ---- parameters: declared once in pipeline/params.py, persisted in params.toml.
# A variable given on make's command line (make train EPOCHS=30, make upload MESSAGE="it's ok")
# reaches digits through the environment, intact: the Makefile names them in DIGITS_MAKE_VARS and
# never pastes a value into a shell command. digits checks each against its declaration (an
# unknown name or a bad value is refused) and writes parameters back to params.toml: they stick.
MAKE_OWN := PYTHON VENV PY DIGITS INSTALLED  # the Makefile's own variables, not digits'
export DIGITS_MAKE_VARS := $(filter-out $(MAKE_OWN),$(strip $(foreach v,$(.VARIABLES),$(if \
  $(filter command line,$(origin $(v))),$(v)))))

# this machine's pip.conf names local indexes that may be absent; drop its warnings about them
PIP_FILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

# ---- files
SRC := $(shell find pipeline -name '*.py' 2>/dev/null)
STAMPS := data/.make
PARSED := data/interim/digits.npz
SPLIT := data/interim/split.npz
NORMALIZER := data/processed/normalizer.json
MODEL_FILE := data/models/model.npz
SUBMISSION_FILE := submissions/submission.csv

.PHONY: help install submit data download split normalize train predict validate run params \
        upload submissions report test lint bench clean clean-cache clean-venv cv sweep \
        throughput FORCE

help: ## list the targets and the parameters
	@echo "Kaggle Digit Recognizer, from scratch in NumPy. Usage: make <target> [VAR=value ...]"
	@echo
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'
	@echo
	@if [ -x $(PY) ]; then $(DIGITS) params --make-help; else echo "Parameters: run 'make install' once, then 'make help' lists them with their defaults."; fi

submit: report ## everything: venv, data, split, normalize, train, predict, report, validate
	@$(DIGITS) validate

# The virtual environment is a real file target: rebuilt only when setup.cfg changes.
$(INSTALLED): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | $(PIP_FILTER)
	@touch $@

install: $(INSTALLED) ## create .venv and install the package (make submit does it too)

# One stamp per stage holding the parameters it depends on (from params.toml and the variables
# given), rewritten by `digits params --stamps` only when they change, so make reruns exactly the
# stages whose parameters changed. `predict` alone never retrains: its stamp holds predict's
# parameters only, and the model's stamp changes only when a train parameter does.
# The sync itself runs only when params.toml, the variables given or the package changed: make
# writes the variables given to $(STAMPS)/given itself ($(file), no shell), only when they change.
GIVEN := $(foreach v,$(DIGITS_MAKE_VARS),$(v)=$($(v)))
ifneq ($(GIVEN),$(file < $(STAMPS)/given))
  $(shell mkdir -p $(STAMPS))
  $(file > $(STAMPS)/given,$(GIVEN))
endif
$(STAMPS)/given:
	@mkdir -p $(@D) && touch $@
$(STAMPS)/%.params: $(STAMPS)/sync ; @:
$(STAMPS)/sync: $(INSTALLED) $(STAMPS)/given $(wildcard params.toml) $(SRC)
	@$(DIGITS) params --stamps $(STAMPS)
	@touch $@

data download: $(PARSED) ## fetch and check the competition data (MIRROR=dir), parse the CSVs
$(PARSED): $(INSTALLED) $(SRC) $(STAMPS)/download.params
	$(DIGITS) download

split: $(SPLIT) ## seeded, stratified train/dev split (DEV_FRACTION, SPLIT_SEED)
$(SPLIT): $(PARSED) $(STAMPS)/split.params
	$(DIGITS) split

normalize: $(NORMALIZER) ## fit the normalization on the train rows
$(NORMALIZER): $(SPLIT)
	$(DIGITS) normalize

train: $(MODEL_FILE) ## train the network (MODEL, EPOCHS, LR, ENSEMBLE, ...)
$(MODEL_FILE): $(NORMALIZER) $(STAMPS)/train.params
	$(DIGITS) train

predict: $(SUBMISSION_FILE) ## label test.csv, write submissions/submission.csv (TTA)
$(SUBMISSION_FILE): $(MODEL_FILE) $(STAMPS)/predict.params
	$(DIGITS) predict

validate: $(SUBMISSION_FILE) ## check the submission (SUBMISSION=file) and say which model made it
	@$(DIGITS) validate

# `digits report` reuses the report of an unchanged model; the stamp skips even that call.
report: $(STAMPS)/report ## figures + report.md of the model in data/reports/<run>/ (also latest/)
$(STAMPS)/report: $(SUBMISSION_FILE) $(SRC) $(STAMPS)/predict.params
	$(DIGITS) report
	@touch $@

run: $(INSTALLED) ## all stages in one process (`digits run`), same caching as submit
	$(DIGITS) run

params: $(INSTALLED) ## show the parameters in effect (params.toml, set with VAR=value)
	@$(DIGITS) params

# ---- cross-validation (FOLDS, 5 unless set), sweeps (GRID=...), 1-vs-2-workers throughput;
# JOBS, BACKEND=loky|dask and SCHEDULER=tcp://host:8786 say where the fold models train
cv: $(NORMALIZER) ## K-fold CV: data/models/cv.json, the out-of-fold estimate (FOLDS=5 JOBS BACKEND)
	$(DIGITS) cv

sweep: $(NORMALIZER) ## CV of each GRID="lr=1e-3,3e-3 epochs=15,20" combination, ranked (KEEP_BEST=1)
	$(DIGITS) sweep

throughput: $(NORMALIZER) ## fold members per hour, 2 workers against 1 (scripts/throughput.py)
	$(PY) scripts/throughput.py

upload: validate ## send the validated submission to Kaggle (MESSAGE='...', FORCE=1)
	$(DIGITS) upload

submissions: $(INSTALLED) ## the submissions ledger joined with Kaggle's status (OFFLINE=1)
	$(DIGITS) submissions

test: $(INSTALLED) ## run the test suite
	$(PY) -m pytest -q

lint: $(INSTALLED) ## ruff over the package, scripts and tests
	$(VENV)/bin/ruff check pipeline scripts tests

bench: $(INSTALLED) ## speed benchmark against PyTorch (installs the `bench` extra)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]' 2>&1 | $(PIP_FILTER)
	$(PY) scripts/bench.py

clean: ## remove generated outputs and EVERY past report (keeps data/raw, the cache, submissions, params.toml)
	rm -rf data/interim data/processed data/models data/reports $(STAMPS) $(SUBMISSION_FILE)

clean-cache: ## remove the joblib cache (every stage recomputes next time)
	rm -rf data/cache

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)

FORCE:
