# `make demo` and `make test` set everything up on a fresh machine; a second run skips an install that is up to date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
# Wheels prebuilt for this machine image (mmcv), used when the checkout sits beside ../shared.
# mmcv 2.1.0 (for the mm extra) comes from there, or from .cache/wheels where tools/install_mmcv.sh builds it.
FIND_LINKS := $(if $(wildcard ../shared/wheels),--find-links ../shared/wheels,) --find-links .cache/wheels
PYTEST_WORKERS ?= 2

.PHONY: demo test lint docs clean

$(STAMP): pyproject.toml $(CONSTRAINTS) tools/install_mmcv.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(FIND_LINKS) torch torchvision
	PYTHON=$(PY) bash tools/install_mmcv.sh
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) $(FIND_LINKS) -e ".[dev,demo,onnx,train,mm,vl,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m ruff check vizoo tools tests
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=20
	# timm's own model tests (tests/test_models.py of timm's sdist, fetched once by pip) on the test_ models
	$(PY) tools/timm_model_tests.py -- -p no:warnings -q

lint: $(STAMP)
	$(PY) -m ruff check vizoo tools tests
	$(PY) -m ruff format --check vizoo tools tests

# The documentation site (mkdocs.yml) into site/; strict, so a broken link or a docstring warning fails it.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
