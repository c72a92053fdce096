# The README's two commands: `make demo` and `make test`. Both need only Python 3 and make.
#
# The provider is tested against the newest Airflow 3 release and against the oldest one it
# declares (pyproject.toml), each in its own virtual environment, with versions pinned by the
# constraints files so that every machine installs the same thing.

PYTHON ?= python3
AIRFLOW_NEWEST := 3.3.2
AIRFLOW_FLOOR := 3.2.0
VENV := .venv
FLOOR_VENV := .venv-floor
# The benchmarks' own environment: the peers they measure and the plotting stay out of the test environments.
BENCH_VENV := .venv-bench
# Where the triggerer benchmark writes latest.json, latest.md and its plots; BENCHMARK_ARGS go to it too
# (e.g. BENCHMARK_ARGS="--only main,tradeoff").
BENCHMARK_OUTPUT ?= benchmarks/results
# Flags for benchmarks/deferral_slots.py, e.g. --skip-sync: its run without deferral takes ~10 minutes.
SLOTS_ARGS ?=
BENCHMARK_ARGS ?=

.PHONY: demo test lint test-newest test-floor benchmark benchmark-quick clean

# venv VENV_DIR AIRFLOW_VERSION CONSTRAINTS EXTRA: a virtual environment with the provider (editable) and EXTRA.
define venv
$(1)/.installed-$(2): pyproject.toml $(3)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -c $(3) "apache-airflow==$(2)" -e ".[$(4)]"
	touch $$@
endef
$(eval $(call venv,$(VENV),$(AIRFLOW_NEWEST),constraints/airflow-$(AIRFLOW_NEWEST).txt,test))
$(eval $(call venv,$(FLOOR_VENV),$(AIRFLOW_FLOOR),constraints/airflow-$(AIRFLOW_FLOOR).txt,test))
$(eval $(call venv,$(BENCH_VENV),$(AIRFLOW_NEWEST),constraints/benchmark-airflow-$(AIRFLOW_NEWEST).txt,benchmark))

NEWEST := $(VENV)/.installed-$(AIRFLOW_NEWEST)
FLOOR := $(FLOOR_VENV)/.installed-$(AIRFLOW_FLOOR)
BENCH := $(BENCH_VENV)/.installed-$(AIRFLOW_NEWEST)
BENCH_PYTHON := $(BENCH_VENV)/bin/python

demo: $(NEWEST)
	$(VENV)/bin/python scripts/demo.py

test: lint test-newest test-floor

lint: $(NEWEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test-newest: $(NEWEST)
	$(VENV)/bin/python -m pytest

test-floor: $(FLOOR)
	$(FLOOR_VENV)/bin/python -m pytest

# One line per benchmark script, run one after another: they share a 2-core machine and must not overlap.
benchmark: $(BENCH)
	$(BENCH_PYTHON) benchmarks/triggerer_polling.py --output-dir $(BENCHMARK_OUTPUT) $(BENCHMARK_ARGS)
	$(BENCH_PYTHON) benchmarks/persist_memory.py
	$(BENCH_PYTHON) benchmarks/worker_submissions.py --output $(BENCHMARK_OUTPUT)/worker_submissions.json
	$(BENCH_PYTHON) benchmarks/import_cost.py --output $(BENCHMARK_OUTPUT)/import_cost.json
	$(BENCH_PYTHON) benchmarks/deferral_slots.py --output $(BENCHMARK_OUTPUT)/deferral_slots.json $(SLOTS_ARGS)

# A smoke run of the triggerer benchmark (about 2 minutes); its figures mean nothing.
benchmark-quick: $(BENCH)
	$(BENCH_PYTHON) benchmarks/triggerer_polling.py --quick --output-dir $(BENCHMARK_OUTPUT)/quick $(BENCHMARK_ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(BENCH_VENV) demo-output
