#!/usr/bin/env bash
# The whole test suite, offline, on the CPU: unit tests, then every notebook under nbval (strict).
#   bash scripts/test.sh             # both (about 30 min on 2 cores)
#   bash scripts/test.sh unit        # the unit tests only (about 9 min); extra arguments go to pytest
#   bash scripts/test.sh notebooks   # the notebooks only (about 19 min); or name some: ... notebooks notebooks/06_*.ipynb
#   bash scripts/test.sh models      # every notebook executed (outputs not compared) on tiny random Qwen2- and
#                                    # BLOOM-style models: the series runs on other architectures
# nbval compares every committed output with a fresh run; notebooks/sanitize.cfg blanks what legitimately varies
# (timings, memory, and every value printed behind "≈"), so the check holds on any CPU and thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export PEFTEDU_PROFILE=${PEFTEDU_PROFILE:-quick}
part=all
case "${1:-}" in unit|notebooks|models|all) part=$1; shift ;; esac
if [ "$part" = models ]; then
    tiny=$(mktemp -d)
    for arch in qwen2 bloom; do
        .venv/bin/python scripts/random_model.py "$arch" "$tiny/$arch" >/dev/null
        .venv/bin/python scripts/run_series.py --model "$tiny/$arch" --parallel 2 "$@"
    done
    rm -rf "$tiny"
    exit 0
fi
if [ "$part" != notebooks ]; then
    .venv/bin/python -m pytest tests/ -q -p no:cacheprovider "$@"
fi
if [ "$part" != unit ]; then
    if [ "$part" = notebooks ] && [ $# -gt 0 ]; then paths=("$@"); else paths=(notebooks/); fi  # some notebooks only
    .venv/bin/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
        --nbval-cell-timeout=900 "${paths[@]}" -q -p no:cacheprovider
fi
