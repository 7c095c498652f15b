# paperzoo: `make demo` trains the default experiment offline; `make test` runs everything CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXPERIMENT ?= lightgcn
WORKERS ?= 2
# versions CI passed with (`make lock` rewrites the file); `make install CONSTRAINTS=` installs without it
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: install lock demo test test-precision test-fast check bench clean-runs

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CUDA build of torch; on this project's machines pip takes it from local disk.
	$(PIP) install -q $(PIN) torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q $(PIN) -e '.[test]'
	# MovieLens-100K (the offline default) ships inside recbole's wheel; we only read the file.
	$(PIP) install -q $(PIN) --no-deps recbole==1.2.1
	touch $@

install: $(VENV)/.installed

# after a green `make test` with newer packages: pin what .venv holds now (tests/test_constraints.py checks the pins
# against pyproject.toml)
lock: install
	{ sed -n '/^#/p' constraints.txt; $(PIP) freeze --exclude-editable | grep -iv '^paperzoo'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

demo: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(VENV)/bin/zoo train experiment=$(EXPERIMENT)

# --dist loadfile: a test file runs in one worker, so a paper's claim tests share launch.check's cached runs
# (pytest 9 with xdist 3.8 does not honour xdist_group marks under --dist loadgroup).
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_SILENT=true \
	  $(PY) -m pytest -n $(WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,$(MAKE) --no-print-directory test-precision)

# every paper's fast contract again under each trainer.precision in PRECISIONS (~40 s each on 2 workers):
# bf16-mixed autocast on the CPU checks what must stay in full precision (derivatives, metrics, figures), not only
# on a lent GPU; 64-true checks that batches and buffers follow the module's dtype (no hard-coded float32)
PRECISIONS ?= bf16-mixed 64-true
test-precision: install
	set -e; for precision in $(PRECISIONS); do echo "== fast contracts under trainer.precision=$$precision"; \
	  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_SILENT=true PAPERZOO_FAST_PRECISION=$$precision \
	  $(PY) -m pytest -n $(WORKERS) --dist loadfile -q -p no:cacheprovider tests/papers -m "not slow" -k fast; done

test-fast: install
	OMP_NUM_THREADS=1 WANDB_MODE=offline $(PY) -m pytest -n $(WORKERS) -m "not slow and not slurm" $(PYTEST_ARGS)

check: install
	$(VENV)/bin/zoo check --all

bench: install
	$(VENV)/bin/zoo bench --all

clean-runs:
	rm -rf runs
