# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= demo

.PHONY: demo test lint install-check bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# setuptools prints an information-only notice ("Editable installation. Please be careful
# with folders ...") for every editable install of a flat layout; it reports nothing wrong,
# so that one warning is ignored for this command (PYTHONWARNINGS reaches the build backend).
$(STAMP): pyproject.toml setup.py | $(PY)
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole pipeline on the simulator, quick preset.
demo: $(STAMP)
	$(VENV)/bin/jaxthyroid demo --out $(OUT)

# The test suite (CPU, a few minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q tests

# Formatter and linter (ruff, configured in pyproject.toml), as CI runs them.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# pip install . (not editable) into a fresh venv; jaxthyroid train from an empty directory (~1.5 min).
install-check: $(STAMP)
	JAXTHYROID_INSTALL_TEST=1 $(PY) -m pytest -q tests/test_install.py

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
