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

# ---- parameters (empty means the model's own default; see `digits train --help`)
MODEL ?= cnn
EPOCHS ?=
BATCH_SIZE ?=
LR ?=
OPTIMIZER ?=
SCHEDULE ?=
WEIGHT_DECAY ?=
HIDDEN ?=
ACTIVATION ?=
DROPOUT ?=
LABEL_SMOOTHING ?=
AUGMENT ?=
PATIENCE ?= 0
REFIT ?= 0
SEED ?= 0
ENSEMBLE ?= 1
DEV_FRACTION ?= 0.1
SPLIT_SEED ?= 0
MAX_TRAIN ?= 0
TTA ?= 0
MIRROR ?=
MESSAGE ?= digits pipeline submission
# ---- cross-validation and parallel training (FOLDS=0|1: the single dev split)
FOLDS ?= 0
JOBS ?=
BACKEND ?= loky
SCHEDULER ?=
GRID ?=
SUBMISSION ?= submissions/submission.csv

# this machine's pip.conf names local indexes that may be absent; drop its warnings about them
PIP_FILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
opt = $(if $(strip $(2)),$(1) $(2))
flag = $(if $(filter 1 yes true,$(2)),--$(1),--no-$(1))
SPLIT_ARGS := --dev-fraction $(DEV_FRACTION) --split-seed $(SPLIT_SEED) --max-train $(MAX_TRAIN)
TRAIN_ARGS := --model $(MODEL) $(call opt,--epochs,$(EPOCHS)) $(call opt,--batch-size,$(BATCH_SIZE)) \
  $(call opt,--lr,$(LR)) $(call opt,--optimizer,$(OPTIMIZER)) $(call opt,--schedule,$(SCHEDULE)) \
  $(call opt,--weight-decay,$(WEIGHT_DECAY)) $(call opt,--hidden,$(HIDDEN)) \
  $(call opt,--activation,$(ACTIVATION)) $(call opt,--dropout,$(DROPOUT)) \
  $(call opt,--label-smoothing,$(LABEL_SMOOTHING)) $(call opt,--augment,$(AUGMENT)) \
  --patience $(PATIENCE) $(call flag,refit,$(REFIT)) --seed $(SEED) --ensemble $(ENSEMBLE)
TRAIN_ARGS := $(strip $(TRAIN_ARGS))
PREDICT_ARGS := $(call flag,tta,$(TTA))
DOWNLOAD_ARGS := $(call opt,--mirror,$(MIRROR))
# folds and where members train; FOLD_ARGS changes results (stamped), PARALLEL_ARGS does not
FOLD_ARGS := --folds $(FOLDS) --split-seed $(SPLIT_SEED) --max-train $(MAX_TRAIN)
CV_FOLDS := $(if $(filter-out 0 1,$(FOLDS)),$(FOLDS),5)
CV_ARGS := --folds $(CV_FOLDS) --split-seed $(SPLIT_SEED) --max-train $(MAX_TRAIN)
PARALLEL_ARGS := $(call opt,--jobs,$(JOBS)) --backend $(BACKEND) $(call opt,--scheduler,$(SCHEDULER))

# ---- files
SRC := $(shell find pipeline -name '*.py' 2>/dev/null)
STAMPS := data/.make
PARSED := data/interim/digits.npz
SPLIT := data/interim/split.npz
NORMALIZER := data/processed/normalizer.json
MODEL_FILE := data/models/model.npz
SUBMISSION_FILE := submissions/submission.csv

.PHONY: help submit data download split normalize train predict validate run upload \
        submissions report test lint bench clean clean-cache clean-venv cv sweep throughput FORCE

help: ## list the targets
	@echo "Kaggle Digit Recognizer, from scratch in NumPy. Usage: make <target> [VAR=value ...]"
	@echo
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: MODEL=$(MODEL) (cnn|mlp|seed) EPOCHS LR BATCH_SIZE OPTIMIZER SCHEDULE HIDDEN=256,128"
	@echo "  ACTIVATION DROPOUT AUGMENT PATIENCE REFIT=0|1 SEED=$(SEED) ENSEMBLE=$(ENSEMBLE) TTA=0|1"
	@echo "  DEV_FRACTION=$(DEV_FRACTION) SPLIT_SEED MAX_TRAIN=rows MIRROR=dir MESSAGE='...' (see digits <stage> --help)"
	@echo "  FOLDS=$(FOLDS) (K fold models as the submission) JOBS BACKEND=loky|dask SCHEDULER=tcp://host:8786 GRID='...'"

submit: validate report ## everything: venv, data, split, normalize, train, predict, validate, report
	@$(if $(filter-out 0 1,$(FOLDS)),$(DIGITS) validate $(SUBMISSION_FILE))

# The virtual environment is a real file target: rebuilt only when setup.cfg changes.
$(INSTALLED): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | $(PIP_FILTER)
	@touch $@

# A stamp per stage holding its arguments, rewritten only when they change.
$(STAMPS)/%.args: FORCE
	@mkdir -p $(@D)
	@echo '$(ARGS_$*)' | cmp -s - $@ || echo '$(ARGS_$*)' > $@
ARGS_download = $(DOWNLOAD_ARGS)
ARGS_split = $(SPLIT_ARGS)
ARGS_train = $(TRAIN_ARGS) $(FOLD_ARGS)
ARGS_predict = $(PREDICT_ARGS)

data download: $(PARSED) ## fetch and check the competition zip, parse the CSVs
$(PARSED): $(INSTALLED) $(SRC) $(STAMPS)/download.args
	$(DIGITS) download $(DOWNLOAD_ARGS)

split: $(SPLIT) ## seeded, stratified train/dev split (DEV_FRACTION, SPLIT_SEED)
$(SPLIT): $(PARSED) $(STAMPS)/split.args
	$(DIGITS) split $(SPLIT_ARGS)

normalize: $(NORMALIZER) ## fit the normalization on the train rows
$(NORMALIZER): $(SPLIT)
	$(DIGITS) normalize

train: $(MODEL_FILE) ## train the network (MODEL, EPOCHS, LR, ENSEMBLE, ...)
$(MODEL_FILE): $(NORMALIZER) $(STAMPS)/train.args
	$(DIGITS) train $(TRAIN_ARGS) $(FOLD_ARGS) $(PARALLEL_ARGS)

predict: $(SUBMISSION_FILE) ## label test.csv, write submissions/submission.csv (TTA)
$(SUBMISSION_FILE): $(MODEL_FILE) $(STAMPS)/predict.args
	$(DIGITS) predict $(PREDICT_ARGS)

validate: $(SUBMISSION_FILE) ## check the submission and print it with the dev accuracy
	@$(DIGITS) validate $(SUBMISSION_FILE)

# `digits report` reuses the report of an unchanged model; the stamp skips even that call.
report: $(STAMPS)/report ## figures + report.md of the model in data/reports/<run>/ (also latest/)
$(STAMPS)/report: $(SUBMISSION_FILE) $(SRC)
	$(DIGITS) report $(PREDICT_ARGS)
	@touch $@

run: $(INSTALLED) ## all stages in one process (`digits run`), same caching as submit
	$(DIGITS) run $(DOWNLOAD_ARGS) $(SPLIT_ARGS) $(TRAIN_ARGS) $(PREDICT_ARGS) --folds $(FOLDS) \
	  $(PARALLEL_ARGS)

# ---- cross-validation (FOLDS, default 5), sweeps, and the 1-vs-2-workers throughput
cv: $(NORMALIZER) ## K-fold CV: data/models/cv.json, the OOF estimate (FOLDS=5 JOBS BACKEND)
	$(DIGITS) cv $(TRAIN_ARGS) $(CV_ARGS) $(PARALLEL_ARGS)

sweep: $(NORMALIZER) ## CV of every GRID="lr=1e-3,3e-3 epochs=15,20" combination, ranked
	@test -n '$(GRID)' || { echo 'make sweep needs GRID="name=v1,v2 ...", e.g. GRID="lr=1e-3,3e-3 epochs=15,20"'; exit 2; }
	$(DIGITS) sweep --grid '$(GRID)' $(TRAIN_ARGS) $(CV_ARGS) $(PARALLEL_ARGS)

throughput: $(NORMALIZER) ## members per hour, 2 workers against 1 (scripts/throughput.py)
	$(PY) scripts/throughput.py

upload: validate ## send the validated submission to Kaggle (MESSAGE='...')
	$(DIGITS) upload -m '$(MESSAGE)' $(SUBMISSION)

submissions: $(INSTALLED) ## the submissions ledger joined with Kaggle's status
	$(DIGITS) submissions

test: $(INSTALLED) ## run the test suite
	$(PY) -m pytest -q

lint: $(INSTALLED) ## ruff over the package, scripts and tests
	$(VENV)/bin/ruff check pipeline scripts tests

bench: $(INSTALLED) ## speed benchmark against PyTorch (installs the `bench` extra)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]' 2>&1 | $(PIP_FILTER)
	$(PY) scripts/bench.py

clean: ## remove generated outputs (keeps data/raw, the cache and submissions history)
	rm -rf data/interim data/processed data/models data/reports $(STAMPS) $(SUBMISSION_FILE)

clean-cache: ## remove the joblib cache (every stage recomputes next time)
	rm -rf data/cache

clean-venv: ## remove the virtual environment
	rm -rf $(VENV)

FORCE:
