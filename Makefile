# `make repro` and `make test` do all set-up on a fresh clone (see README).
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock
export PATH := $(BIN):$(PATH)

.PHONY: install data repro test lint mlflow-ui benchmark benchmark-accuracy

# every package at the version requirements.lock pins (docs/reproducibility.md), then the project
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r $(LOCK)
	$(BIN)/python -m pip install --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

# requirements.lock: what pyproject.toml asks for (dev and airflow extras included) and all that
# it needs, for Python 3.11 on x86-64 Linux, resolved by uv from PyPI. `make lock` keeps the
# versions the lock already pins and adds or drops what pyproject.toml changed; `make lock-upgrade`
# moves every package to its newest release that pyproject.toml allows.
LOCK_COMPILE = $(BIN)/uv pip compile pyproject.toml --extra dev --extra airflow \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" --quiet --output-file $(LOCK)
.PHONY: lock lock-upgrade
$(BIN)/uv:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep '^uv==' $(LOCK))"

lock: $(BIN)/uv  ## pin what pyproject.toml asks for in requirements.lock (the next make installs it)
	$(LOCK_COMPILE)

lock-upgrade: $(BIN)/uv  ## requirements.lock with every package at its newest allowed release
	$(LOCK_COMPILE) --upgrade

install: $(STAMP)  ## virtual environment with the project and every tool it uses

data: install  ## bring RAVDESS into data/raw (SER_CORPUS_SOURCE points elsewhere) and track it
	ser data
	dvc add --quiet data/raw

repro: data  ## the main job: the whole pipeline on real audio
	dvc repro

# `dvc exp show` lists every param (about 140 columns); this keeps the params that differ
# between the rows and the headline metrics: validation and test UAR (docs/experiments.md)
EXP_SHOW_KEEP := ^(Experiment|val_uar|test(_speaker_normalised)?\.uar)$$
EXP_SHOW_DROP := ^([^.]*|test.*|.*/.*)$$
EXP_SHOW_ARGS ?=
.PHONY: exp-show
exp-show: install  ## the experiments table, narrowed to what was swept and the headline metrics
	dvc exp show --only-changed --keep '$(EXP_SHOW_KEEP)' --drop '$(EXP_SHOW_DROP)' $(EXP_SHOW_ARGS)

# Two pytest-xdist workers: much of the suite waits on dvc, MLflow, Airflow and PostgreSQL
# subprocesses, which overlap; each test file runs whole on one worker, in file order.
TEST_WORKERS ?= 2
test: install  ## the test suite (CI runs this)
	pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	ruff format --check src tests dags benchmarks
	ruff check src tests dags benchmarks

MLFLOW_UI_PORT ?= 5000
# one web worker and no GenAI job runners (MLflow 3 starts 4 workers and 8 job processes otherwise)
mlflow-ui: install  ## browse runs of the embedded store: open the address it prints (docs/mlflow.md)
	@python -m ser.ops.tracking http://127.0.0.1:$(MLFLOW_UI_PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--host 127.0.0.1 --port $(MLFLOW_UI_PORT) --workers 1

# A team's tracking server (docs/team.md): runs and models in PostgreSQL, artifacts proxied to a
# folder or gs://bucket/path; clients set MLFLOW_TRACKING_URI=http://<host>:<port>
MLFLOW_BACKEND_STORE_URI ?= postgresql://ser@127.0.0.1:5432/mlflow
MLFLOW_ARTIFACTS_DESTINATION ?= $(CURDIR)/mlartifacts-server
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_SERVER_ARGS ?=
# true starts MLflow's GenAI job runners too (seven processes; this project has no use for them)
MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
.PHONY: mlflow-server
mlflow-server: install  ## MLflow tracking server on PostgreSQL at http://$(MLFLOW_HOST):$(MLFLOW_PORT) (docs/team.md)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=$(MLFLOW_SERVER_ENABLE_JOB_EXECUTION) \
		mlflow server --backend-store-uri "$(MLFLOW_BACKEND_STORE_URI)" \
		--artifacts-destination "$(MLFLOW_ARTIFACTS_DESTINATION)" \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) $(MLFLOW_SERVER_ARGS)

benchmark: install  ## speed figures on the shared RAVDESS (see README)
	python benchmarks/pipeline_speed.py

# fusion's row also scores its members (the spectrogram CNN and logreg on ComParE) alone;
# linear_svm on ComParE is left out: its calibrated fit takes over 10 minutes a fold (README)
benchmark-accuracy: install  ## grouped k-fold CV by speaker, model kinds x feature sets (see README)
	python benchmarks/accuracy.py --sets compare --kinds fusion seed_cnn linear_svm

.PHONY: benchmark-robustness benchmark-speech-gate
benchmark-robustness: install  ## the accuracy benchmark's folds under noise, telephone, rooms, level, clipping (docs/benchmarks.md)
	python benchmarks/robustness.py --kinds fusion seed_cnn linear_svm

benchmark-speech-gate: install  ## the speech gate's thresholds, refusals and cost (docs/monitoring.md)
	python benchmarks/speech_gate.py

.PHONY: benchmark-seeds golden
benchmark-seeds: install  ## after `make repro`: test UAR of its training over 5 seeds (docs/reproducibility.md)
	python benchmarks/seed_spread.py

golden: install  ## rewrite tests/golden/tiny_pipeline.json after an intended change of outputs
	python tests/test_reproducibility.py

.PHONY: benchmark-serving
benchmark-serving: install  ## `mlflow models serve` of models/ on 127.0.0.1 under load: p50/p95 latency, clips/s (see README)
	python benchmarks/serving.py

.PHONY: push pull

push: install  ## send data, features and models to the DVC remote (docs/gcs.md)
	ser remote push

pull: install  ## fetch data, features and models from the DVC remote (docs/gcs.md)
	ser remote pull

.PHONY: compose-check
compose-check: install  ## validate docker-compose.yaml and lint the Dockerfile, no container engine needed (docs/docker.md)
	docker-compose config --quiet
	hadolint Dockerfile

# Airflow with a project-local home (.airflow/, SQLite) that sees only this checkout's dags/
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
# the UI and API listen on this address only; AIRFLOW_API_HOST=0.0.0.0 opens them to the network
AIRFLOW_API_HOST ?= 127.0.0.1
AIRFLOW_API_PORT ?= 8080
# LocalExecutor workers the scheduler starts (Airflow's default, 32, is for bigger machines)
AIRFLOW_PARALLELISM ?= 2
.PHONY: airflow-test airflow-standalone
airflow-test: install  ## run the ser_pipeline DAG once: clone main, dvc exp run, quality gate, dvc exp push (docs/airflow.md)
	$(AIRFLOW_ENV) airflow db migrate
	$(AIRFLOW_ENV) airflow dags test ser_pipeline

# one Ctrl-C stops every process of it within 20 s (src/ser/ops/supervise.py says why it is needed)
airflow-standalone: install  ## local Airflow on http://127.0.0.1:8080 running ser_pipeline on its schedule (docs/airflow.md)
	$(AIRFLOW_ENV) AIRFLOW__API__HOST=$(AIRFLOW_API_HOST) AIRFLOW__API__PORT=$(AIRFLOW_API_PORT) \
		AIRFLOW__CORE__PARALLELISM=$(AIRFLOW_PARALLELISM) python -m ser.ops.supervise airflow standalone
