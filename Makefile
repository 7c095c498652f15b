# paperzoo: `make demo` trains the default experiment offline; `make test` runs everything CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXPERIMENT ?= lightgcn
WORKERS ?= 2

.PHONY: install demo test test-bf16 test-fast check bench clean-runs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CUDA build of torch; on this project's machines pip takes it from local disk.
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]'
	# MovieLens-100K (the offline default) ships inside recbole's wheel; we only read the file.
	$(PIP) install -q --no-deps recbole==1.2.1
	touch $@

install: $(VENV)/.installed

demo: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/zoo train experiment=$(EXPERIMENT)

# --dist loadfile: a test file runs in one worker, so a paper's claim tests share launch.check's cached runs
# (pytest 9 with xdist 3.8 does not honour xdist_group marks under --dist loadgroup).
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_SILENT=true \
	  $(PY) -m pytest -n $(WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(MAKE) --no-print-directory test-bf16)

# every paper's fast contract again under trainer.precision=bf16-mixed (autocast on the CPU, ~40 s): what must
# stay in full precision (derivatives, metrics, figures) is checked here too, not only on a lent GPU
test-bf16: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_SILENT=true PAPERZOO_FAST_PRECISION=bf16-mixed \
	  $(PY) -m pytest -n $(WORKERS) --dist loadfile -q -p no:cacheprovider tests/papers -m "not slow" -k fast

test-fast: install
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -n $(WORKERS) -m "not slow and not slurm" $(PYTEST_ARGS)

check: install
	$(VENV)/bin/zoo check --all

bench: install
	$(VENV)/bin/zoo bench --all

clean-runs:
	rm -rf runs
