# The two commands of the README:  `make demo`  and  `make test`.
# Both create .venv on first use and install the package into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= demo

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the whole pipeline on the simulator, quick preset.
demo: $(STAMP)
	$(VENV)/bin/jaxthyroid demo --out $(OUT)

# The test suite (CPU, a few minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
