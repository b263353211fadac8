# Two entry points on a fresh machine (see README.md):
#   make demo   set up .venv and run the main job on its built-in default
#   make test   set up .venv and PLUMED (built once, cached), run the linters and the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup plumed demo test bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "make setup: installing latf_openmm and its stack into $(VENV) (torch with CUDA, OpenMM, ...: several GB, minutes)"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e ".[test]"
	touch $(STAMP)

# PLUMED 2.10.1 with PYTORCH and OPES from vendor/, built once into a cache folder
# (scripts/install_plumed.sh; nothing is built where PLUMED_KERNEL is set).
plumed: $(STAMP)
	scripts/install_plumed.sh $(VENV)

demo: $(STAMP)
	$(BIN)/latf loop workflows/threehole.toml --out runs/threehole

test: $(STAMP) plumed
	$(BIN)/ruff check latf_openmm tests bench
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=10

bench: $(STAMP)
	$(BIN)/python bench/md_speed.py
	$(BIN)/python bench/bias_overhead.py
	$(BIN)/python bench/walker_sharing.py
	$(BIN)/python bench/ala2_metad.py
