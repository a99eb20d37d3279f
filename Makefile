# Two commands: `make run` opens the app on the bundled model, `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: run test lint format bench models install install-dev

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# DATA=/path/to/folder: CIFAR-10 (torchvision python layout) or an ImageFolder, for models that name them.
# MALLOC_ARENA_MAX=2: glibc gives each worker thread its own heap and keeps what a closed session freed
# (bench/app_load.py: +37% of warm idle after 50 sessions by default, +5% with 2 arenas and ui/jobs.py's collection).
run: install
	MALLOC_ARENA_MAX=2 BNL_DATA="$(DATA)" $(PY) -m streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

test: install-dev
	$(PY) -m pytest -q

# ruff: lint and format check (configured in pyproject.toml); `make format` rewrites in place.
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m defense bench

# Rebuild the bundled backdoored models (commands also listed in assets/README.md).
models: install
	bash assets/rebuild.sh
