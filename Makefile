# The two commands: `make run` (service with demo data) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VIEWER_BIND ?= 127.0.0.1:8000
export VIEWER_BIND
export VIEWER_DATA_DIR ?= $(CURDIR)/data

.PHONY: run test lint bench setup setup-dev clean host-portal

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

run: setup
	$(PY) -m viewer.cli demo
	@echo
	@echo "================================================================"
	@echo " Viewer: http://$(VIEWER_BIND)/"
	@echo " Sign in by opening this one-time link in your browser:"
	@$(PY) -m viewer.cli login-link --base http://$(VIEWER_BIND) | sed 's/^/   /'
	@echo " (a new link: $(PY) -m viewer.cli login-link)"
	@echo "================================================================"
	@echo
	exec $(PY) -m gunicorn -c gunicorn.conf.py wsgi:app

# The example portal that embeds the viewer (examples/host-portal), on http://localhost:8100.
host-portal: setup
	exec $(PY) examples/host-portal/app.py

test: setup-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: setup-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
