#!/usr/bin/env bash
# Wheels for the GPU check machine (Python 3.12, no package index there): the packages paperzoo needs that its
# image lacks (hydra-core, omegaconf, antlr4, submitit, dysts + gluonts + pydantic, recbole for MovieLens,
# scikit-fem for the Navier-Stokes data), at the versions of this checkout's .venv, into .whl/ (git-ignored,
# ~32 MiB). Run here, then carry `.whl` with
# scripts/gpu_check.sh. W&B is left out: the GPU check runs with logger=none / WANDB_MODE=disabled.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
version() { "$PIP" show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
mkdir -p .whl
# pure-Python packages (antlr4 4.9.3 is an sdist only: built into a py3 wheel here)
"$PIP" wheel -q --no-deps -w .whl "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
  "antlr4-python3-runtime==$(version antlr4-python3-runtime)" "submitit==$(version submitit)" \
  "dysts==$(version dysts)" "gluonts==$(version gluonts)" "recbole==$(version recbole)" \
  "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)" \
  "pydantic==$(version pydantic)" "scikit-fem==$(version scikit-fem)"
# compiled: pydantic-core for CPython 3.12 on x86-64 Linux
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pydantic-core==$(version pydantic-core)"
ls -1 .whl
du -sh .whl
