#!/usr/bin/env bash
# The GPU check of issue 12, as one command on a lent GPU machine with no hub and no package registry
# (the `device` tool of this workplace: $OUT comes back, at most 8 files). What it runs, all in bf16:
#   1. the whole series in the `full` profile on a random-weight Qwen2.5-1.5B (its real shapes; SmolLM2's
#      tokenizer), 4 notebooks at a time, with each notebook's time and peak GPU memory;
#   2. notebook 06 again in fp16 with loss scaling (PEFTEDU_PRECISION=fp16: what a T4 gets);
#   3. the peak training memory of every method at TinyLlama-1.1B and Qwen2.5-1.5B in the full profile
#      (4 steps each: the peak is reached at the first optimizer step), for notebook 12's memory table;
#   4. the throughput benchmark: full fine-tuning, LoRA and HF peft's LoRA on packed 2,048-token sequences.
# `bash scripts/gpu_check.sh short` runs 4 and the memory of every method at TinyLlama-1.1B only (about 3 minutes).
# Carried along (made by scripts/gpu_wheels.sh): .whl (the course's pinned pure-Python wheels and Jupyter), .gpu/bnb (bitsandbytes with its CUDA 13
# library only), .gpu/tok (a tokenizer folder). The machine's own torch (a CUDA build) is used.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
log=$OUT/run.log
exec > >(tee -a "$log") 2>&1
t0=$(date +%s)
lap() { echo "[gpu] $1 at $(( $(date +%s) - t0 )) s"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/bnb:$PWD
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PEFTEDU_CACHE=/tmp/peftedu-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, peft, bitsandbytes, nbclient; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, '| cuda', torch.version.cuda, '| capability', torch.cuda.get_device_capability())"
lap installed
if [ "${1:-}" = short ]; then  # what fits in 3 minutes: 4, then the peak memory of every method at TinyLlama-1.1B
    OMP_NUM_THREADS=6 python3 scripts/random_model.py tinyllama-1.1b /tmp/tinyllama-1.1b-random --tokenizer .gpu/tok \
        --dtype bf16 > /tmp/write.log 2>&1 &
    timeout 75 python3 -m peftedu showdown --throughput --model tinyllama-1.1b --device cuda --out /tmp/tp
    cp /tmp/tp/throughput_*.json "$OUT/throughput.json" 2>/dev/null
    lap "throughput done"
    wait
    methods=$(python3 -c "from peftedu.course.showdown import METHODS; print(' '.join(METHODS))")
    echo "$methods" | tr ' ' '\n' | xargs -P 8 -I{} timeout 70 python3 -m peftedu showdown --model /tmp/tinyllama-1.1b-random \
        --profile full --max-steps 2 --no-peft --no-serving --device cuda --methods {} --out /tmp/mem/{} > /tmp/mem.log 2>&1
    python3 - "$OUT/memory_tinyllama-1.1b.json" <<'PY'
import glob, json, sys
rows, first = [], None
for path in sorted(glob.glob("/tmp/mem/*/showdown_gpu_*.json")):
    data = json.load(open(path))
    first = first or data
    rows += data["rows"]
if first:
    first["rows"] = rows
    json.dump(first, open(sys.argv[1], "w"), indent=1)
print(len(rows), "method rows")
PY
    tail -20 /tmp/mem.log
    lap "memory done"
    exit 0
fi
python3 scripts/random_model.py qwen2.5-1.5b /tmp/qwen2.5-1.5b-random --tokenizer .gpu/tok --dtype bf16 &
python3 scripts/random_model.py tinyllama-1.1b /tmp/tinyllama-1.1b-random --tokenizer .gpu/tok --dtype bf16 &
wait
lap "random models written"
# 1 + 2: the series (longest notebooks first), and 06 in fp16
PEFTEDU_PROFILE=full timeout 400 python3 scripts/run_series.py --model /tmp/qwen2.5-1.5b-random --parallel 4 \
    --log "$OUT/series_full_qwen2.5-1.5b.md" notebooks/07_*.ipynb notebooks/11_*.ipynb notebooks/06_*.ipynb \
    notebooks/02_*.ipynb notebooks/10_*.ipynb notebooks/05_*.ipynb notebooks/01_*.ipynb notebooks/03_*.ipynb \
    notebooks/04_*.ipynb notebooks/08_*.ipynb notebooks/09_*.ipynb notebooks/00_*.ipynb notebooks/12_*.ipynb \
    notebooks/13_*.ipynb > /tmp/series.log 2>&1 &
series=$!
PEFTEDU_PRECISION=fp16 PEFTEDU_PROFILE=full timeout 400 python3 scripts/run_series.py --model /tmp/qwen2.5-1.5b-random \
    --log "$OUT/series_fp16_06.md" notebooks/06_*.ipynb > /tmp/fp16.log 2>&1 &
# 3: memory of every method, both models side by side
for m in tinyllama-1.1b qwen2.5-1.5b; do
    timeout 400 python3 -m peftedu showdown --model /tmp/$m-random --profile full --max-steps 4 --no-peft --no-serving \
        --device cuda --out /tmp/mem_$m > /tmp/mem_$m.log 2>&1 &
done
wait $series; lap "series done"; cat /tmp/series.log
wait; lap "memory and fp16 done"; tail -5 /tmp/fp16.log
for m in tinyllama-1.1b qwen2.5-1.5b; do
    tail -3 /tmp/mem_$m.log; cp /tmp/mem_$m/showdown_gpu_*.json "$OUT/memory_$m.json" 2>/dev/null
done
# 4: throughput, alone on the GPU
timeout 150 python3 -m peftedu showdown --throughput --model tinyllama-1.1b --device cuda --out /tmp/tp
cp /tmp/tp/throughput_*.json "$OUT/throughput.json" 2>/dev/null
lap "all done"
