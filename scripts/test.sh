#!/usr/bin/env bash
# The whole test suite, offline, on the CPU: unit tests, then every notebook under nbval (strict).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export PEFTEDU_PROFILE=${PEFTEDU_PROFILE:-quick}
.venv/bin/python -m pytest tests/ -q -p no:cacheprovider "$@"
.venv/bin/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
    --nbval-cell-timeout=600 notebooks/ -q -p no:cacheprovider
