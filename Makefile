# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint pictures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The shared real CIFAR-10 when it sits beside the checkout; else the workspace default
# (<workspace>/data/cifar10, downloaded there when online).
DATA ?= $(firstword $(wildcard ../shared/data/cifar10-jpeg.tar.gz))
DEMO_DATA := $(if $(DATA),--data $(DATA),)

demo: $(STAMP)
	$(BIN)/patchnas search run --name demo --family convmixer \
		--set h=64..256:32 d=2..6 p=2,4 k=3,5,7 --trials 8 --epochs 2 --subset 5000 \
		--workers 2 $(DEMO_DATA)

# one decoded copy of the test data for the three pytest processes (and the next `make test`)
test: export PATCHNAS_TEST_CACHE = $(CURDIR)/.pytest-data
test: $(STAMP)
	$(BIN)/ruff check .
	# Two pytest processes (in one the CPUs idle half the time): the `heavy` tests (Ray, the
	# shared MLflow database; one at a time, tests/helpers.py) beside the rest;
	# then the wall-clock checks by themselves. Each prints its slowest tests.
	$(BIN)/pytest -m heavy --durations=14 > .pytest-heavy.log 2>&1 & heavy=$$!; \
	$(BIN)/pytest -m "not heavy and not alone" --durations=25; rest=$$?; \
	wait $$heavy; heavy=$$?; echo "--- the heavy tests:"; cat .pytest-heavy.log; \
	[ $$rest -eq 0 ] && [ $$heavy -eq 0 ]
	$(BIN)/pytest -m alone

# the README's pictures of a real study (needs chromium); check them by eye
pictures: $(STAMP)
	$(BIN)/python docs/pictures.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
