# Quick start: `make demo` and `make test`. Both install into .venv first (a no-op when current).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format-check clean bench-skab bench-quality bench-throughput bench-profile soak

install: $(STAMP)

# constraints.txt pins the CPU build of torch that installs from local disk; users may run any torch>=2.3.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

# SKAB benchmark (README, "SKAB benchmark"): writes bench/results/skab.json. PLOT=DIR also writes
# one PNG per file, which needs the optional plot extra (installed here when asked for).
DATA ?= ../shared/data/skab
bench-skab: install
	$(if $(PLOT),$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[plot]')
	$(PY) bench/skab.py --data $(DATA) $(if $(PLOT),--plot $(PLOT))

# Detection quality on SKAB, TEP, SMD, the synthetic fleet and the NAB development set (with NAB's
# standard score) with the default configs, the tuned SKAB config and a PCA baseline (README,
# "Detection quality"): writes bench/results/quality.json. DATA_ROOT holds skab/, tep/, smd/ and
# nab-dev/; ARGS passes options (e.g. ARGS="--datasets tep --seeds 0").
DATA_ROOT ?= ../shared/data
bench-quality: install
	$(if $(PLOT),$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[plot]')
	$(PY) bench/quality.py --data $(DATA_ROOT) $(if $(PLOT),--plot $(PLOT)) $(ARGS)

# Daemon throughput, latency and memory (bench/RESULTS.md): writes bench/results/throughput.json.
# ARGS passes options, e.g. ARGS=--quick for a smoke run.
bench-throughput: install
	$(PY) bench/throughput.py $(ARGS)

# Where the pipeline's time goes: py-spy samples one rates round, the top is printed and saved.
bench-profile: install
	$(VENV)/bin/py-spy record --rate 200 --format raw --output bench/results/pipeline-profile.raw \
		-- $(PY) bench/throughput.py --stages rates --rounds 1 --out bench/results/profiled-run.json
	$(PY) bench/profile_top.py bench/results/pipeline-profile.raw --within measure_pipeline \
		| tee bench/results/pipeline-profile.txt

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .demo .soak .pytest_cache

format-check: install
	$(VENV)/bin/ruff format --check .

# Not part of make test: a daemon under steady load, RSS and open files printed every minute.
MINUTES ?= 10
soak: install
	MINUTES=$(MINUTES) $(PY) scripts/soak.py
