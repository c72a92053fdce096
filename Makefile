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

.PHONY: demo test lint test-newest test-floor benchmark clean

# venv VENV_DIR AIRFLOW_VERSION: a virtual environment with the provider (editable) and its test tools.
define venv
$(1)/.installed-$(2): pyproject.toml constraints/airflow-$(2).txt
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -c constraints/airflow-$(2).txt "apache-airflow==$(2)" -e ".[test]"
	touch $$@
endef
$(eval $(call venv,$(VENV),$(AIRFLOW_NEWEST)))
$(eval $(call venv,$(FLOOR_VENV),$(AIRFLOW_FLOOR)))

NEWEST := $(VENV)/.installed-$(AIRFLOW_NEWEST)
FLOOR := $(FLOOR_VENV)/.installed-$(AIRFLOW_FLOOR)

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

benchmark: $(NEWEST)
	$(VENV)/bin/python benchmarks/triggerer_polling.py
	$(VENV)/bin/python benchmarks/persist_memory.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) demo-output
