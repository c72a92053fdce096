# The README's two commands: `make demo` and `make test`. Both need only Python 3 and make.
#
# The provider is tested against the newest Airflow 3 release and against the newest patch of each
# older minor release down to the oldest it declares (pyproject.toml), each in its own virtual
# environment (.venv-<version>), with versions pinned by the constraints files so that every machine
# installs the same thing.

PYTHON ?= python3
AIRFLOW_NEWEST := 3.3.2
# Oldest last: that one is the floor pyproject.toml declares.
AIRFLOW_OLDER := 3.2.0 3.1.8
VENV := .venv
# The benchmarks' own environment: the peers they measure and the plotting stay out of the test environments.
BENCH_VENV := .venv-bench
# Where the triggerer benchmark writes latest.json, latest.md and its plots; BENCHMARK_ARGS go to it too
# (e.g. BENCHMARK_ARGS="--only main,tradeoff").
BENCHMARK_OUTPUT ?= benchmarks/results
# Flags for benchmarks/deferral_slots.py, e.g. --skip-sync: its run without deferral takes ~10 minutes.
SLOTS_ARGS ?=
BENCHMARK_ARGS ?=
# The chaos soak's seed and size (tests/cluster/soak.py --help), and the Airflow it runs on (one of the
# tested versions); its report goes to soak-output/<version>/ (soak-output/<version>-large/ for soak-large).
SOAK_ARGS ?= --seed 20261125 --images 1000 --batch-size 10
# The 10,000-image run: the README's recommended layout, modest faults, the emulator's imaging cheap, py-spy on Airflow.
SOAK_LARGE_ARGS ?= --seed 20261202 --images 10000 --batch-size 100 --faults modest --cache-results --profile
# py-spy, for soak-large's --profile: a tool of the soak only, installed into its environment when it runs.
PY_SPY := py-spy==0.4.3
# mutmut, for `make mutation`: a tool of that pass only, installed into the test environment when it runs.
MUTMUT := mutmut==3.8.1
SOAK_AIRFLOW ?= $(AIRFLOW_NEWEST)
SOAK_VENV := $(if $(filter $(AIRFLOW_NEWEST),$(SOAK_AIRFLOW)),$(VENV),.venv-$(SOAK_AIRFLOW))

.PHONY: demo test lint test-newest $(addprefix test-,$(AIRFLOW_OLDER)) benchmark benchmark-quick benchmark-cold benchmark-hot-paths soak soak-large soak-airflow-unknown mutation clean

# venv VENV_DIR AIRFLOW_VERSION CONSTRAINTS EXTRA: a virtual environment with the provider (editable) and EXTRA.
define venv
$(1)/.installed-$(2): pyproject.toml $(3)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -c $(3) "apache-airflow==$(2)" -e ".[$(4)]"
	touch $$@
endef
$(eval $(call venv,$(VENV),$(AIRFLOW_NEWEST),constraints/airflow-$(AIRFLOW_NEWEST).txt,test))
$(foreach v,$(AIRFLOW_OLDER),$(eval $(call venv,.venv-$(v),$(v),constraints/airflow-$(v).txt,test)))
$(eval $(call venv,$(BENCH_VENV),$(AIRFLOW_NEWEST),constraints/benchmark-airflow-$(AIRFLOW_NEWEST).txt,benchmark))

NEWEST := $(VENV)/.installed-$(AIRFLOW_NEWEST)
BENCH := $(BENCH_VENV)/.installed-$(AIRFLOW_NEWEST)
BENCH_PYTHON := $(BENCH_VENV)/bin/python

demo: $(NEWEST)
	$(VENV)/bin/python scripts/demo.py

test: lint test-newest $(addprefix test-,$(AIRFLOW_OLDER))

lint: $(NEWEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-newest: $(NEWEST)
	$(VENV)/bin/python -m pytest

# test-<version>: the suite in that version's environment.
define tested
test-$(1): .venv-$(1)/.installed-$(1)
	.venv-$(1)/bin/python -m pytest
endef
$(foreach v,$(AIRFLOW_OLDER),$(eval $(call tested,$(v))))

# One line per benchmark script, run one after another: they share a 2-core machine and must not overlap.
benchmark: $(BENCH)
	$(BENCH_PYTHON) benchmarks/triggerer_polling.py --output-dir $(BENCHMARK_OUTPUT) $(BENCHMARK_ARGS)
	$(BENCH_PYTHON) benchmarks/triggerer_report.py $(BENCHMARK_OUTPUT)/latest.json
	$(BENCH_PYTHON) benchmarks/hot_paths.py --output $(BENCHMARK_OUTPUT)/hot_paths.json
	$(BENCH_PYTHON) benchmarks/persist_memory.py
	$(BENCH_PYTHON) benchmarks/worker_submissions.py --output $(BENCHMARK_OUTPUT)/worker_submissions.json
	$(BENCH_PYTHON) benchmarks/import_cost.py --output $(BENCHMARK_OUTPUT)/import_cost.json
	$(BENCH_PYTHON) benchmarks/deferral_slots.py --output $(BENCHMARK_OUTPUT)/deferral_slots.json $(SLOTS_ARGS)

# The hot paths (one poll, one parse, one event, one polling round) beside their floors, in seconds.
benchmark-hot-paths: $(NEWEST)
	$(VENV)/bin/python benchmarks/hot_paths.py

# The first TaskResultTrigger run in a fresh process, beside a second one, on every tested Airflow.
benchmark-cold: $(NEWEST) $(foreach v,$(AIRFLOW_OLDER),.venv-$(v)/.installed-$(v))
	$(VENV)/bin/python benchmarks/cold_trigger.py
	$(foreach v,$(AIRFLOW_OLDER),.venv-$(v)/bin/python benchmarks/cold_trigger.py;)

# A smoke run of the triggerer benchmark (about 2 minutes); its figures mean nothing.
benchmark-quick: $(BENCH)
	$(BENCH_PYTHON) benchmarks/triggerer_polling.py --quick --output-dir $(BENCHMARK_OUTPUT)/quick $(BENCHMARK_ARGS)
	$(BENCH_PYTHON) benchmarks/triggerer_report.py $(BENCHMARK_OUTPUT)/quick/latest.json

# 1,000 images through the Celery cluster of tests/cluster while a triggerer and the worker are killed
# (about 10 minutes; needs the local PostgreSQL and Redis). Not part of `make test`.
# `make soak SOAK_AIRFLOW=3.1.8` runs it on an older tested Airflow.
SOAK_ENV := $(if $(filter $(SOAK_AIRFLOW),$(AIRFLOW_NEWEST) $(AIRFLOW_OLDER)),$(SOAK_VENV)/.installed-$(SOAK_AIRFLOW),soak-airflow-unknown)

soak: $(SOAK_ENV)
	$(SOAK_VENV)/bin/python -m tests.cluster.soak $(SOAK_ARGS) --output soak-output/$(SOAK_AIRFLOW)

soak-large: $(SOAK_ENV)
	$(SOAK_VENV)/bin/python -m pip install --quiet "$(PY_SPY)"
	$(SOAK_VENV)/bin/python -m tests.cluster.soak $(SOAK_LARGE_ARGS) --output soak-output/$(SOAK_AIRFLOW)-large

# Mutation testing (docs/development.md): mutmut changes the modules that [tool.mutmut] in pyproject.toml
# names, one change at a time, and runs their unit tests against each (over an hour on 2 cores). Every
# pass starts afresh in mutants/; it ends with the score and every mutant the tests did not kill.
# Not part of `make test`.
mutation: $(NEWEST)
	$(VENV)/bin/python -m pip install --quiet "$(MUTMUT)"
	rm -rf mutants
	$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut export-cicd-stats
	@$(VENV)/bin/python -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
		print('mutation score: %d/%d killed;' % (s['killed'], s['total']), \
		', '.join('%s %d' % (k.replace('_', ' '), v) for k, v in s.items() if k not in ('killed', 'total')))"
	@echo "Not killed (mutmut show NAME shows one):"
	@$(VENV)/bin/mutmut results

soak-airflow-unknown:
	@echo "SOAK_AIRFLOW=$(SOAK_AIRFLOW): it must be one of the tested versions, $(AIRFLOW_NEWEST) $(AIRFLOW_OLDER)"; exit 2

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(AIRFLOW_OLDER)) $(BENCH_VENV) demo-output soak-output
